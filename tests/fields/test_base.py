"""Building blocks shared by the fields."""

from __future__ import annotations

import pytest
import torch

from ernerf.fields.base import MLP


def test_mlp_of_parts_equals_the_mlp_of_their_concatenation_in_values_and_gradients() -> None:
    torch.manual_seed(0)
    mlp = MLP(5 + 3 + 2 + 1, 4, 16, 3)
    points, att, shared, eye_att = (torch.randn(7, 5, requires_grad=True), torch.randn(7, 3, requires_grad=True),
                                    torch.randn(1, 2, requires_grad=True), torch.rand(7, 1, requires_grad=True))
    code, eye = torch.randn(1, 3, requires_grad=True), torch.rand(1, 1)
    ref = mlp(torch.cat([points, att * code, shared.expand(7, -1), eye_att * eye], -1))
    got = mlp.forward_parts([points, att, shared, eye_att], [None, code, None, eye])
    torch.testing.assert_close(got, ref)
    leaves = (points, att, shared, eye_att, code, *mlp.parameters())
    ref_grads = torch.autograd.grad(ref.square().sum(), leaves)
    got_grads = torch.autograd.grad(got.square().sum(), leaves)
    for g, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(g, r)
    with pytest.raises(ValueError, match="input features"):
        mlp.forward_parts([points, att])
