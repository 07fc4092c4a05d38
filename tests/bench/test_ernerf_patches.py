"""The patch engine of the ER-NeRF side-by-side, on a synthetic checkout written here (no ER-NeRF code): anchored
edits applied once, originals kept, undone by restore, and a missing anchor refused before anything is written."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.ernerf_sbs import patches
from bench.ernerf_sbs.checkout import check_checkout
from bench.ernerf_sbs.patches import Rule, apply, guarded_import, restore
from ernerf.errors import ErnerfError
from tests.conftest import REPO

RULES = (
    Rule("flag", ("a/build.py", "b/build.py"), "'-std=old'", "'-std=new'", why="w", count=None),
    Rule("beta", ("main.py",), "beta = 0\n", "beta = 0.0\n", why="w"),
    Rule("guard", ("main.py",), "\nimport optional_pkg\n", guarded_import(["optional_pkg"], "why"), why="w"),
)
FILES = {
    "a/build.py": "flags = ['-O3', '-std=old']\nmore = ['-std=old']\n",
    "b/build.py": "flags = ['-std=old']\n",
    "main.py": "import os\nimport optional_pkg\n\nbeta = 0\nprint(beta)\n",
    "untouched.py": "x = 1\n",
}


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_apply_patches_each_anchor_keeps_originals_and_records(checkout: Path) -> None:
    written, record = apply(checkout, RULES)
    assert written
    assert (checkout / "a/build.py").read_text() == "flags = ['-O3', '-std=new']\nmore = ['-std=new']\n"
    main = (checkout / "main.py").read_text()
    assert "beta = 0.0\n" in main and "beta = 0\n" not in main
    assert "except ImportError:\n    optional_pkg = None\n" in main
    for name in ("a/build.py", "b/build.py", "main.py"):
        assert (checkout / f"{name}.orig").read_text() == FILES[name]
    assert not (checkout / "untouched.py.orig").exists()
    assert set(record["files"]) == {"a/build.py", "b/build.py", "main.py"}
    assert [r["name"] for r in json.loads((checkout / patches.RECORD).read_text())["rules"]] == ["flag", "beta", "guard"]


def test_apply_again_writes_nothing(checkout: Path) -> None:
    apply(checkout, RULES)
    before = snapshot(checkout)
    written, _ = apply(checkout, RULES)
    assert not written
    assert snapshot(checkout) == before
    assert (checkout / "main.py").read_text().count("beta = 0.0") == 1


def test_restore_puts_back_the_originals_byte_for_byte(checkout: Path) -> None:
    original = snapshot(checkout)
    apply(checkout, RULES)
    assert sorted(restore(checkout)) == ["a/build.py", "b/build.py", "main.py"]
    assert snapshot(checkout) == original  # no .orig, no record left
    assert restore(checkout) == []  # nothing patched: nothing to do


def test_files_with_windows_line_ends_are_patched_and_keep_them(checkout: Path) -> None:
    # ER-NeRF's Python files end their lines in CRLF, which a clone on Linux keeps; the anchors are written with LF
    for name in ("main.py", "a/build.py"):
        (checkout / name).write_bytes(FILES[name].replace("\n", "\r\n").encode())
    original = snapshot(checkout)
    apply(checkout, RULES)
    main = (checkout / "main.py").read_bytes()
    assert b"beta = 0.0\r\n" in main and b"except ImportError:\r\n    optional_pkg = None\r\n" in main
    assert main.count(b"\n") == main.count(b"\r\n")  # every line of the patched file ends as the file's did
    assert (checkout / "b/build.py").read_bytes() == b"flags = ['-std=new']\n"
    restore(checkout)
    assert snapshot(checkout) == original


def test_a_file_mixing_line_ends_is_matched_as_it_is(checkout: Path) -> None:
    (checkout / "main.py").write_bytes(b"import os\r\nimport optional_pkg\n\nbeta = 0\r\nprint(beta)\n")
    with pytest.raises(ErnerfError, match=r"main.py: patch 'beta' expected 1 .*found 0"):
        apply(checkout, RULES)


def test_missing_anchor_fails_loudly_and_writes_nothing(checkout: Path) -> None:
    (checkout / "b/build.py").write_text("flags = ['-std=other']\n")
    before = snapshot(checkout)
    with pytest.raises(ErnerfError, match=r"b/build.py: patch 'flag' expected at least 1 .*found 0"):
        apply(checkout, RULES)
    assert snapshot(checkout) == before


def test_anchor_found_more_often_than_expected_is_refused(checkout: Path) -> None:
    (checkout / "main.py").write_text(FILES["main.py"] + "beta = 0\n")
    with pytest.raises(ErnerfError, match="patch 'beta' expected 1 .*found 2"):
        apply(checkout, RULES)


def test_missing_file_is_named(checkout: Path) -> None:
    (checkout / "b/build.py").unlink()
    with pytest.raises(ErnerfError, match="b/build.py: missing from the checkout"):
        apply(checkout, RULES)


def test_a_file_edited_after_patching_is_not_overwritten_without_force(checkout: Path) -> None:
    apply(checkout, RULES)
    (checkout / "main.py").write_text("edited\n")
    with pytest.raises(ErnerfError, match="main.py .* changed since it was patched"):
        apply(checkout, RULES)
    with pytest.raises(ErnerfError, match="--restore --force"):
        restore(checkout)
    restore(checkout, force=True)
    assert (checkout / "main.py").read_text() == FILES["main.py"]


def test_other_rules_start_again_from_the_originals(checkout: Path) -> None:
    apply(checkout, RULES)
    changed = (Rule("beta", ("main.py",), "beta = 0\n", "beta = 0.5\n", why="w"),)
    written, record = apply(checkout, changed)
    assert written and set(record["files"]) == {"main.py"}
    assert "beta = 0.5\n" in (checkout / "main.py").read_text()
    assert "import optional_pkg\n" in (checkout / "main.py").read_text()  # the dropped rule was undone
    assert (checkout / "a/build.py").read_text() == FILES["a/build.py"]
    assert not (checkout / "a/build.py.orig").exists()


def test_orig_files_without_a_record_are_refused(checkout: Path) -> None:
    (checkout / "main.py.orig").write_text("stale\n")
    with pytest.raises(ErnerfError, match=r"main.py.orig but no record"):
        apply(checkout, RULES)


def test_guarded_import_binds_none_for_a_missing_package() -> None:
    code = guarded_import(["json", "no_such_package_xyz"], "test")
    ast.parse(code)
    namespace: dict = {}
    exec(code, namespace)
    assert namespace["json"] is None and namespace["no_such_package_xyz"] is None
    exec(guarded_import(["json"], "test"), namespace)
    assert namespace["json"] is json


def test_the_shipped_rules_are_well_formed() -> None:
    names = [r.name for r in patches.RULES]
    assert len(names) == len(set(names))
    for rule in patches.RULES:
        assert rule.old and rule.old != rule.new and rule.why and rule.paths
        assert all(not p.startswith("/") and ".." not in p for p in rule.paths)
    assert {p for r in patches.RULES for p in r.paths} >= {"main.py", "nerf_triplane/network.py"}


def test_check_checkout_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ErnerfError, match="no folder"):
        check_checkout(tmp_path / "nowhere")
    with pytest.raises(ErnerfError, match="not a checkout of Fictionarry/ER-NeRF"):
        check_checkout(tmp_path)
    for name in ("main.py", "encoding.py", "nerf_triplane/network.py", "nerf_triplane/provider.py",
                 "nerf_triplane/utils.py", "nerf_triplane/renderer.py", "raymarching/backend.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    with pytest.raises(ErnerfError, match=r"lacks raymarching/backend.py or its CUDA sources raymarching/src/\*\.cu"):
        check_checkout(tmp_path)


def test_cli_prepare_on_a_wrong_path_is_one_error_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "ernerf_side_by_side.py"), "prepare", "--ernerf",
                           str(tmp_path / "nope")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: no folder {tmp_path / 'nope'}: give the path of your ER-NeRF "
                                                "checkout (git clone https://github.com/Fictionarry/ER-NeRF)."]


def test_cli_part_ours_needs_the_ernerf_part_first(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "ernerf_side_by_side.py"), "train", "--ernerf",
                           str(tmp_path), "--subject", "anna", "--out", str(tmp_path / "sbs"), "--part", "ours"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: no side-by-side in {tmp_path / 'sbs'}: run `train --part ernerf` (same "
                                   "arguments) first.")
