"""workers.linear: oneDNN's dense layer against torch's."""
from __future__ import annotations

import pytest
import torch

from workers import linear as L


@pytest.mark.parametrize("relu", [False, True])
def test_linear_is_torchs_linear_within_float32_rounding(relu, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, 300, generator=gen)
    weight, bias = torch.randn(50, 300, generator=gen) / 17, torch.randn(50, generator=gen)
    want = torch.nn.functional.linear(x, weight, bias)
    want = torch.relu(want) if relu else want
    got = L.linear(x, weight, bias, relu=relu)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got < 0).any() != relu  # ReLU exactly when asked
    monkeypatch.setattr(L, "_ONEDNN", False)
    assert torch.equal(L.linear(x, weight, bias, relu=relu), want)  # the fallback is torch itself


def test_onednn_is_found_on_this_torch():
    # The pinned CPU torch ships oneDNN; if this fails the engines silently lose their fast path.
    assert L.onednn_available()
