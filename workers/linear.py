"""Dense layers for the engines: on a CPU straight through oneDNN, elsewhere through torch.

torch sends a float32 ``F.linear`` on a CPU to MKL, and MKL takes its AVX2 code on AMD
processors even where they have AVX-512. oneDNN, which torch also ships, picks its code from
the processor's features: on a Zen 5 host the BossNet and AstroNN dense layers ran at 2.3–2.8x
MKL's rate (``specq bench`` shows the effect). Same float32 products, summed in another order:
the outputs move by float32 rounding only. The baselines keep torch's modules on purpose.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_ONEDNN: bool | None = None


def onednn_available() -> bool:
    """Whether this torch build runs a float32 linear layer through oneDNN (probed once)."""
    global _ONEDNN
    if _ONEDNN is None:
        try:
            probe = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 3), torch.ones(4, 3), torch.zeros(4),
                                                       "relu", [], "")
            _ONEDNN = bool(torch.equal(probe, torch.full((2, 4), 3.0)))
        except (AttributeError, RuntimeError, NotImplementedError):  # a build without oneDNN, or another API
            _ONEDNN = False
    return _ONEDNN


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           relu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, ReLU'd when asked.

    float32 on a CPU: one oneDNN primitive that reads the dense weights as they are (no
    packed copy is kept, so no memory is added); anything else: torch's ops.
    """
    if (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and onednn_available()):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if relu else "none", [], "")
    out = F.linear(x, weight, bias)
    return F.relu(out) if relu else out
