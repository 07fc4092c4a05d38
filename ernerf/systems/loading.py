"""A trained TalkingHeadSystem from its checkpoint: the one place a checkpoint becomes a model on a device.

A checkpoint records what the model is: the hyper-parameters that rebuild it and its weights. How it runs is chosen
here, where it is loaded: the execution engine (conf/engine/) and the hash grids' kernel backend. A model trained on a
GPU with the Triton kernels renders on a CPU with the PyTorch reference (the two share one parameter layout,
docs/design/model_api.md), and a model trained on a CPU renders on a GPU with the Triton kernels. Inference,
evaluation and the benches load through `load_system`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from ernerf.errors import ErnerfError

# Execution settings that checkpoints of earlier versions carried among the model's hyper-parameters; the engine
# chooses them now, so loading drops them.
EXECUTION_HPARAMS = ("compile_field", "cuda_graph", "cuda_graph_headroom", "cuda_graph_capacity", "tf32",
                     "render_cuda_graph", "eval_chunk", "eval_chunk_gpu", "cuda_graph_allreduce_in_graph")
# The marcher's sample-placement option of a short-lived version (span: box | occupied, probes): it lost to the box
# span in training (docs/evaluation.md), and the box span is what those checkpoints' default did.
RETIRED_MARCHER_HPARAMS = ("span", "probes")
SHARED_LAYOUT = ("auto", "torch", "triton")  # hash-grid backends with the reference's parameter layout
ENCODER_BACKENDS = ("auto", "torch", "triton")  # what a caller may ask for


def load_system(path: Path | str, device: str = "auto", engine: Any = None, encoder_backend: str = "auto",
                render_max_samples: int | None = None) -> Any:
    """The trained system of checkpoint `path`, in eval mode on `device` (auto: CUDA when there is one).

    engine: the ExecutionEngine that runs it (None: conf/engine/default.yaml's settings).
    encoder_backend: its hash grids' kernels; auto = Triton on CUDA when it imports, the PyTorch reference elsewhere.
    render_max_samples: its renders evaluate at most each ray's first n occupied samples (RayMarcher); None: as the
    checkpoint says (every occupied sample, unless it was trained with model.marcher.render_max_samples).
    """
    check_render_max_samples(render_max_samples)
    try:
        from ernerf.engine import ExecutionEngine
        from ernerf.systems.talking_head import TalkingHeadSystem
    except ImportError as exc:
        raise ErnerfError(f"cannot import the training system ({exc}): reinstall with `pip install -e .`.") from exc
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    checkpoint = read_checkpoint(path)
    hparams = model_hparams(checkpoint["hyper_parameters"], kernel_backend(encoder_backend, dev), dev)
    system = TalkingHeadSystem(**known_options(hparams, constructor_options(TalkingHeadSystem), path))
    try:
        system.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise ErnerfError(f"the weights in {path} do not fit the model its hyper-parameters describe "
                          f"({str(exc).splitlines()[0]}): was it written by another version of train.py?") from exc
    system = system.to(dev).eval()
    if render_max_samples is not None:
        system.marcher.render_max_samples = render_max_samples
    (engine if engine is not None else ExecutionEngine()).attach(system)
    return system


def check_render_max_samples(value: Any) -> None:
    """A whole number >= 1, or None; else a one-line error naming the setting."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ErnerfError(f"render_max_samples must be a whole number of samples >= 1 (e.g. 8), or null for every "
                          f"occupied sample; got {value!r}.")


def loader_for(cfg: Any) -> Callable[[Path, str], Any]:
    """`(path, device) -> system` with the engine, encoder backend and render samples an application's config names
    (`engine`: a conf/engine/ node, `encoder_backend`, `render_max_samples`), as infer.py, evaluate.py and serve.py
    load. A bad render_max_samples fails here, before any checkpoint is read."""
    from hydra.utils import instantiate

    max_samples = cfg.get("render_max_samples")
    check_render_max_samples(max_samples)
    engine, backend = instantiate(cfg.engine), str(cfg.encoder_backend)
    return lambda path, device: load_system(path, device, engine, backend, max_samples)


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """A Lightning checkpoint's contents (tensors and plain values only), or a clear error."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ErnerfError(f"checkpoint {path} does not exist: train the stage first (python train.py ...).") from exc
    except Exception as exc:  # noqa: BLE001 - unpickling fails in many ways; each means the same to the user
        raise ErnerfError(f"cannot read checkpoint {path} ({type(exc).__name__}): is it a train.py checkpoint?") from exc
    if "hyper_parameters" not in checkpoint or "state_dict" not in checkpoint:
        raise ErnerfError(f"{path} holds no model hyper-parameters and weights: give a train.py checkpoint (last.ckpt).")
    return checkpoint


def kernel_backend(choice: str, device: torch.device) -> str:
    """The hash-grid backend to run on `device`: `choice`, or for auto the Triton kernels on CUDA when they import
    and the PyTorch reference elsewhere."""
    from ernerf.encoders.hashgrid import triton_available

    if choice not in ENCODER_BACKENDS:
        raise ErnerfError(f"encoder_backend must be one of {', '.join(ENCODER_BACKENDS)}, got {choice!r}.")
    if choice != "auto":
        return choice
    return "triton" if device.type == "cuda" and triton_available() else "torch"


def model_hparams(saved: Mapping[str, Any], backend: str, device: torch.device) -> dict[str, Any]:
    """The constructor arguments of the model that saved hyper-parameters describe, to run on `device`: execution
    settings and retired marcher options of earlier versions dropped, every hash grid on `backend`."""
    hparams = {k: v for k, v in saved.items() if k not in EXECUTION_HPARAMS}
    if isinstance(hparams.get("marcher"), Mapping):
        hparams["marcher"] = {k: v for k, v in hparams["marcher"].items() if k not in RETIRED_MARCHER_HPARAMS}
    return on_backend(hparams, backend, device)


def constructor_options(cls: type) -> set[str]:
    """The keyword arguments `cls(...)` takes."""
    return {name for name in inspect.signature(cls.__init__).parameters if name != "self"}


def known_options(hparams: Mapping[str, Any], known: Collection[str], path: Path | str) -> dict[str, Any]:
    """`hparams` without the options of another version (a newer one, a branch) that this one's model lacks: one
    left off (None) made no module and no weights, so it is dropped; one in use is refused, naming it, since its
    weights need code that is not here."""
    unknown = sorted(set(hparams) - set(known))
    in_use = [name for name in unknown if hparams[name] is not None]
    if in_use:
        raise ErnerfError(f"{path} was trained with model options this version of ernerf does not have "
                          f"({', '.join(in_use)}): load it with the version that trained it, or update this one "
                          "(git pull && pip install -e .).")
    return {name: value for name, value in hparams.items() if name not in unknown}


def on_backend(node: Any, backend: str, device: torch.device) -> Any:
    """A copy of config `node` whose hash grids (the nodes with a `backend`) run on `backend`. tiny-cuda-nn's grids
    keep theirs: its parameter layout is its own, so no other backend can take their weights."""
    if isinstance(node, list):
        return [on_backend(v, backend, device) for v in node]
    if not isinstance(node, Mapping):
        return node
    out = {k: on_backend(v, backend, device) for k, v in node.items()}
    if out.get("backend") in SHARED_LAYOUT:
        out["backend"] = backend
    elif out.get("backend") == "tcnn" and device.type != "cuda":
        raise ErnerfError("this model's hash grids were trained with tiny-cuda-nn (backend tcnn), whose parameter "
                          "layout the PyTorch and Triton backends do not share: load it on a CUDA device with "
                          "tiny-cuda-nn installed.")
    return out
