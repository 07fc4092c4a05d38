"""bench/torso_codes.py: the codes of held-out frames from their neighbours in pose."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from tests.bench.scripts import bench_module


def test_pose_neighbour_codes_average_the_codes_of_the_nearest_training_poses() -> None:
    import torch

    from ernerf.fields.torso import TorsoField

    torso_codes = bench_module("torso_codes")
    torso = TorsoField(num_frames=3, individual_dim=2, num_levels=2, base_resolution=4, desired_resolution=8,
                       log2_hashmap_size=6)
    with torch.no_grad():
        torso.individual_codes.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]))
    poses = torch.eye(4).repeat(5, 1, 1)
    for frame, shift in enumerate([0.0, 0.1, 1.0, 0.02, 0.95]):  # three training frames, then two new ones
        poses[frame, 0, 3] = shift
    data = SimpleNamespace(poses=poses, num_train=3)
    system = SimpleNamespace(torso=torso)
    nearest = torso_codes.pose_neighbour_codes(system, data, np.array([3, 4]), k=1)
    assert torch.equal(nearest, torch.tensor([[1.0, 0.0], [5.0, 5.0]]))  # frame 0's code, then frame 2's
    two = torso_codes.pose_neighbour_codes(system, data, np.array([3, 4]), k=2)
    assert torch.allclose(two, torch.tensor([[0.5, 0.5], [2.5, 3.0]]))  # frames 0 and 1; frames 2 and 1
