"""What the BossNet-source tests share: the parity weights, the stored inputs and the authors' outputs.

``data/bossnet_sources.json`` holds what the network authors' code computes for the spectra of
``data/bossnet_sources_inputs.npz`` with the weights of :func:`parity_state_dict`; the command
that made both is in ``data/make_bossnet_source_vectors.py``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
PARITY_SEED = 7
# torch's default initialisation bounds a weight by 1/sqrt(fan_in); sqrt(6) more is He's uniform
# bound, which keeps activations near unit scale through the ReLUs, so the outputs differ
# between spectra by far more than the parity tolerance.
PARITY_GAIN = math.sqrt(6.0)


def parity_state_dict(source: str, seed: int = PARITY_SEED) -> dict:
    """Seeded random weights of ``source``'s network, convolution and linear weights scaled by :data:`PARITY_GAIN`."""
    from workers.bossnet.weights import demo_state_dict

    state = demo_state_dict(seed, source)
    return {k: (v * PARITY_GAIN if k.endswith(".weight") and ".bn" not in k else v) for k, v in state.items()}


def inputs() -> dict[str, np.ndarray]:
    with np.load(DATA / "bossnet_sources_inputs.npz") as npz:
        return dict(npz)


def vectors() -> dict:
    return json.loads((DATA / "bossnet_sources.json").read_text())
