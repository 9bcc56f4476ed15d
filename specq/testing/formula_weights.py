"""Deterministic "formula" weights of ``shared/spec/network-vectors.md``.

Filling a network's state dict with these values and comparing its outputs with
``tests/data/network_outputs.json`` checks the whole forward pass without the
published weights.
"""
from __future__ import annotations

import math

import numpy as np

_GOLDEN = 2654435769
_MIX = 0x45D9F3B
_MASK = 0xFFFFFFFF


def formula_s(key: str, n: int) -> np.ndarray:
    """The sequence ``s_i`` in [-1, 1) for a tensor named ``key`` with ``n`` elements (float64)."""
    x = (np.arange(n, dtype=np.uint64) + np.uint64((_GOLDEN * len(key)) & _MASK)) & np.uint64(_MASK)
    for _ in range(2):
        x = ((x ^ (x >> np.uint64(16))) * np.uint64(_MIX)) & np.uint64(_MASK)
    x = x ^ (x >> np.uint64(16))
    return 2.0 * x.astype(np.float64) / 2.0**32 - 1.0


def formula_value(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The value the formula gives tensor ``key`` of ``shape`` (float64, reshaped)."""
    n = int(np.prod(shape)) if shape else 1
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape)
    if key == "pos_enc.inv_freq":
        return np.ones(shape)
    if key == "labels_std":
        return np.full(shape, 250.0)
    s = formula_s(key, n).reshape(shape)
    if key.endswith("running_mean"):
        return 0.1 * s
    if key.endswith("running_var"):
        return 1.0 + 0.3 * s**2
    if ".bn" in key and key.endswith(".weight"):
        return 1.0 + 0.1 * s
    if ".bn" in key and key.endswith(".bias"):
        return 0.05 * s
    if key == "input_mean":
        return 0.9 + 0.1 * s
    if key.endswith(".bias"):
        return 0.01 * s
    if key.endswith(".weight"):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return math.sqrt(6.0 / fan_in) * s
    raise KeyError(f"the formula does not cover {key!r}")


def formula_state_dict(model) -> dict:
    """A state dict for ``model`` (a torch module) filled by the formula, dtypes kept."""
    import torch

    out = {}
    for key, tensor in model.state_dict().items():
        value = formula_value(key, tuple(tensor.shape))
        out[key] = torch.as_tensor(value).to(tensor.dtype)
    return out
