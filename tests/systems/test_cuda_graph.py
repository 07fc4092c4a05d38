"""The training step replayed as a CUDA graph computes what the eager step computes (GPU only)."""

from __future__ import annotations

import pytest
import torch

from ernerf.systems.cuda_graph import GraphedStep, round_up
from tests.systems.test_talking_head import build

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_round_up_to_the_granularity() -> None:
    assert round_up(1, 16384) == 16384 and round_up(16385, 16384) == 32768 and round_up(0, 8) == 8


def ray_batch(seed: int, n: int = 4096, frame: int = 3, step: int = 10) -> dict:
    """Rays from the ER-NeRF camera distance towards the head box, like TrainRays gives."""
    g = torch.Generator().manual_seed(seed)
    rays_o = torch.zeros(n, 3)
    rays_o[:, 2] = -2.4
    rays_d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g) * 0.15 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    batch = {"rays_o": rays_o, "rays_d": rays_d, "rgb": torch.rand(n, 3, generator=g), "bg": torch.rand(n, 3, generator=g),
             "face_mask": torch.rand(n, generator=g) > 0.5, "pixel_index": torch.randint(0, 64 * 64, (n,), generator=g),
             "c2w": torch.eye(4), "audio": torch.randn(8, 16, 80, generator=g), "eye": torch.rand(1, generator=g)}
    batch = {k: v.cuda() for k, v in batch.items()}
    return batch | {"patch_shape": None, "height": 64, "width": 64, "frame_index": frame, "step": step, "progress": 0.3}


def eager_loss_and_grads(system, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    system.zero_grad(set_to_none=True)
    loss = system.step_outputs(batch)["loss"]
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in system.parameters() if p.grad is not None]


@gpu
@needs_cuda
def test_graph_replays_match_the_eager_step_on_new_batches() -> None:
    torch.manual_seed(0)
    system = build().cuda()
    system.marcher.eval()  # no jitter: both paths see the same samples
    system.grid.occupancy.fill_(True)
    graphed = GraphedStep(system.step_outputs, system, scalars=("frame_index", "step", "progress"), granularity=1024)
    graphed(ray_batch(0))
    assert graphed.captures == 1 and graphed.capacity >= int(graphed.outputs["occupied"])
    for seed, frame in ((1, 5), (2, 7)):
        batch = ray_batch(seed, frame=frame, step=40)
        loss = graphed(batch)["loss"].clone()
        grads = [p.grad.clone() for p in system.parameters() if p.grad is not None]
        ref_loss, ref_grads = eager_loss_and_grads(system, batch)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-6)
        assert len(grads) == len(ref_grads)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-6)
        for p in system.parameters():  # the eager reference replaced the graph's gradient tensors: re-capture
            p.grad = None
        graphed.graph = None


@gpu
@needs_cuda
def test_graph_recaptures_when_the_occupied_samples_outgrow_the_capacity() -> None:
    torch.manual_seed(0)
    system = build().cuda()
    system.grid.occupancy.zero_()
    system.grid.occupancy[: system.grid.occupancy.numel() // 8] = True
    graphed = GraphedStep(system.step_outputs, system, scalars=("frame_index", "step", "progress"), granularity=1024,
                          check_every=2)
    graphed(ray_batch(0))
    small = graphed.capacity
    system.grid.occupancy.fill_(True)  # the grid opens up: many more samples per ray
    for seed in range(1, 5):
        graphed(ray_batch(seed))
    assert graphed.captures == 2 and graphed.capacity > small
