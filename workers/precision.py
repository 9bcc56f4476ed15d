"""What arithmetic a forward pass runs in on CUDA: full float32 unless a precision asks otherwise."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def cuda_tf32(device: torch.device, allowed: bool) -> Iterator[None]:
    """Set whether CUDA convolutions and matmuls may use TF32, restoring the global flags afterwards.

    cuDNN's convolutions take TF32 by default; ``allowed=False`` keeps full float32 for
    parity with a CPU. Elsewhere than CUDA there is nothing to switch.
    """
    if device.type != "cuda":
        yield
        return
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = allowed
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev
