"""BossNet: stellar parameters (Teff, log g, [Fe/H], v_r) from BOSS optical spectra.

Modules: :mod:`~workers.bossnet.schema` (the result, declared once; no torch),
:mod:`~workers.bossnet.network` (the network), :mod:`~workers.bossnet.fft` (its convolutions in
the frequency domain), :mod:`~workers.bossnet.weights` (weights loading, demo weights),
:mod:`~workers.bossnet.preprocess` (numpy reference and batched torch preprocessing),
:mod:`~workers.bossnet.pipeline` (:class:`BossNetPipeline`) and
:mod:`~workers.bossnet.baseline` (the one-spectrum-at-a-time yardstick).

Importing the package is cheap: torch loads only with the modules that need it.
"""
from workers.bossnet.schema import BOSSNET_SCHEMA

__all__ = ["BOSSNET_SCHEMA", "BossNetPipeline"]


def __getattr__(name: str):
    if name == "BossNetPipeline":
        from workers.bossnet.pipeline import BossNetPipeline

        return BossNetPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
