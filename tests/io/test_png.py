"""The fast PNG writer is lossless: every reader the project and ER-NeRF use decodes the exact pixels written."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from ernerf.io.png import encode_png
from ernerf.preprocess.parsing import PALETTE_RGB, labels_to_rgb, read_parsing, write_parsing


def _photo_like(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Smooth gradients plus noise and a flat block: what filters and zlib levels treat differently."""
    h, w = shape[:2]
    ramp = (np.add.outer(np.arange(h), np.arange(w)) * 3 % 256).astype(np.uint8)
    image = np.broadcast_to(ramp[..., None] if len(shape) == 3 else ramp, shape).copy()
    image ^= rng.integers(0, 8, size=shape, dtype=np.uint8)
    image[h // 3:h // 2] = 0
    return image


@pytest.mark.parametrize("level", [1, 4, 9])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_every_level_decodes_to_the_same_pixels(channels: int, level: int) -> None:
    shape = (61, 47) if channels == 1 else (61, 47, channels)
    image = _photo_like(np.random.default_rng(channels), shape)
    data = encode_png(image, level=level)
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(back, image if channels == 1 else image[..., [2, 1, 0, 3][:channels]])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), image)


def test_higher_levels_are_smaller_on_photo_like_content() -> None:
    image = _photo_like(np.random.default_rng(0), (128, 128, 4))
    assert len(encode_png(image, level=4)) < len(encode_png(image, level=1))


def test_parsing_palette_png_reads_back_as_the_rgb_colour_code(tmp_path) -> None:
    """parsing/<i>.png is a palette image now: cv2.imread (ER-NeRF, paste-back) and PIL's convert("RGB") (the data
    module) must see exactly the RGB map an RGB PNG held, and it must be smaller."""
    labels = np.random.default_rng(1).integers(0, 4, size=(40, 56)).astype(np.uint8)
    labels[:10] = 0  # runs as well as noise
    write_parsing(tmp_path / "p.png", labels)
    rgb = labels_to_rgb(labels)
    assert np.array_equal(cv2.imread(str(tmp_path / "p.png")), rgb[..., ::-1])
    with Image.open(tmp_path / "p.png") as img:
        assert img.mode == "P" and np.array_equal(np.asarray(img.convert("RGB")), rgb)
    assert np.array_equal(read_parsing(tmp_path / "p.png"), labels)
    assert (tmp_path / "p.png").stat().st_size < len(encode_png(rgb))


def test_palette_indices_outside_the_palette_are_refused() -> None:
    with pytest.raises(ValueError, match="outside the palette"):
        encode_png(np.full((4, 4), 4, np.uint8), palette=PALETTE_RGB)
    with pytest.raises(ValueError, match="palette image"):
        encode_png(np.zeros((4, 4, 3), np.uint8), palette=PALETTE_RGB)


def test_palette_pngs_of_encode_png_decode_to_their_indices_and_palette() -> None:
    from ernerf.io.png import decode_palette_png

    rng = np.random.default_rng(5)
    for k, shape in ((4, (40, 56)), (256, (33, 17)), (1, (8, 8))):
        palette = rng.integers(0, 256, (k, 3), dtype=np.uint8)
        indices = rng.integers(0, k, shape, dtype=np.uint8)
        indices[: shape[0] // 3] = 0  # runs as well as noise
        got = decode_palette_png(encode_png(indices, level=4, palette=palette))
        assert got is not None and np.array_equal(got[0], indices) and np.array_equal(got[1], palette)


def test_other_or_damaged_pngs_are_left_to_a_general_decoder() -> None:
    from ernerf.io.png import decode_palette_png

    labels = np.random.default_rng(6).integers(0, 4, (20, 30)).astype(np.uint8)
    data = encode_png(labels, palette=PALETTE_RGB)
    assert decode_palette_png(encode_png(labels_to_rgb(labels))) is None  # RGB, not palette
    assert decode_palette_png(cv2.imencode(".png", labels_to_rgb(labels))[1].tobytes()) is None
    assert decode_palette_png(data[:-20]) is None and decode_palette_png(b"") is None  # truncated
    idat = data.index(b"IDAT") + 4
    for at in (idat - 6, idat + 5):  # the chunk's length, a byte of the compressed rows
        damaged = bytearray(data)
        damaged[at] ^= 0xFF
        assert decode_palette_png(bytes(damaged)) is None
    buffer = io.BytesIO()
    Image.fromarray(labels, "P").save(buffer, format="PNG")  # PIL's own filter choice: decoded here or left alone
    pil = decode_palette_png(buffer.getvalue())
    assert pil is None or np.array_equal(pil[0], labels)


def test_read_parsing_gives_the_same_labels_for_palette_and_rgb_maps(tmp_path) -> None:
    from ernerf.errors import ErnerfError

    labels = np.random.default_rng(7).integers(0, 4, (24, 36)).astype(np.uint8)
    write_parsing(tmp_path / "palette.png", labels)
    cv2.imwrite(str(tmp_path / "rgb.png"), labels_to_rgb(labels)[..., ::-1])  # maps of folders made before
    assert np.array_equal(read_parsing(tmp_path / "palette.png"), labels)
    assert np.array_equal(read_parsing(tmp_path / "rgb.png"), labels)
    (tmp_path / "cut.png").write_bytes((tmp_path / "palette.png").read_bytes()[:40])
    for broken in ("cut.png", "missing.png"):
        with pytest.raises(ErnerfError, match="cannot read parsing map"):
            read_parsing(tmp_path / broken)
