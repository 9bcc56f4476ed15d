"""Full float32 on CUDA unless a precision asks for TF32: the flags are set, and restored."""
from __future__ import annotations

import contextlib

import torch

from workers.precision import cuda_tf32


def test_tf32_is_switched_for_cuda_only_and_restored():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with cuda_tf32(torch.device("cuda"), False):  # a device object needs no GPU
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        with cuda_tf32(torch.device("cpu"), False):  # nothing to switch elsewhere
            assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_astronn_mc_dropout_runs_without_tf32(monkeypatch):
    from workers.astronn_dist import network

    asked = []

    @contextlib.contextmanager
    def recorded(device, allowed):
        asked.append((device.type, allowed))
        yield

    monkeypatch.setattr(network, "cuda_tf32", recorded)
    model = network.ApogeeDistBCNN().eval()
    pred, logvar = model.mc_forward(torch.randn(2, model.n_pixels), 3, [1, 2])
    assert pred.shape == logvar.shape == (2, 3) and asked == [("cpu", False)]
