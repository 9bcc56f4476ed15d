"""The BossNet result, declared once (fields, units, flag bits and their conditions).

Column names, units (as the data model spells them), types and flag bits follow SDSS's ``astraAllStarBossNet`` /
``astraAllVisitBossNet`` summary products. The flags are computed as each result is
written (the reference deployment set them later with SQL updates).

Imports numpy only: producers and the result store read this module.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from workers.schema import Field, Flag, ResultSchema


def _col(c: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    return np.asarray(c[name], dtype=float)


def _no_finite_teff(c: Mapping[str, np.ndarray]) -> np.ndarray:
    return ~np.isfinite(_col(c, "teff"))


def _unreliable_teff(c: Mapping[str, np.ndarray]) -> np.ndarray:
    teff = _col(c, "teff")
    return (teff < 1700) | (teff > 100_000)


def _unreliable_logg(c: Mapping[str, np.ndarray]) -> np.ndarray:
    logg = _col(c, "logg")
    return (logg < -1) | (logg > 10)


def _unreliable_fe_h(c: Mapping[str, np.ndarray]) -> np.ndarray:
    teff, logg, fe_h = _col(c, "teff"), _col(c, "logg"), _col(c, "fe_h")
    return (teff < 3200) | (logg > 5) | (fe_h < -4) | (fe_h > 2)


def _suspicious_fe_h(c: Mapping[str, np.ndarray]) -> np.ndarray:
    teff, logg = _col(c, "teff"), _col(c, "logg")
    return (teff < 3900) & (logg > 3) & (logg < 6)


_STELLAR_FIELDS = (
    Field("teff", "float", "K", "Effective temperature"),
    Field("e_teff", "float", "K", "Uncertainty in effective temperature"),
    Field("logg", "float", "log10(cm/s^2)", "Surface gravity, log10(g / (cm s^-2))"),
    Field("e_logg", "float", "log10(cm/s^2)", "Uncertainty in surface gravity"),
    Field("fe_h", "float", "dex", "Metallicity [Fe/H]"),
    Field("e_fe_h", "float", "dex", "Uncertainty in metallicity [Fe/H]"),
)
_V_R_FIELDS = (
    Field("bn_v_r", "float", "km/s", "Radial velocity as estimated by BossNet"),
    Field("e_bn_v_r", "float", "km/s", "Uncertainty in radial velocity as estimated by BossNet"),
)


def bossnet_schema(pipeline: str, product: str, description: str, v_r: bool) -> ResultSchema:
    """A BossNet-family result: Teff, log g, [Fe/H] (and v_r where the model gives it), with BossNet's flags.

    Every source of the network family writes the same column names and flag bits, so
    their tables line up; only the fields a model outputs are declared.
    """
    return ResultSchema(
        pipeline=pipeline,
        product=product,
        exception_flag="flag_runtime_exception",
        description=description,
        fields=_STELLAR_FIELDS + (_V_R_FIELDS if v_r else ()),
        flags=(
            # The runner also sets this bit on a spectrum whose processing raised.
            Flag("flag_runtime_exception", 0, "Exception occurred at runtime, or no finite Teff",
                 _no_finite_teff),
            Flag("flag_unreliable_teff", 1, "Teff < 1700 K or Teff > 100,000 K", _unreliable_teff),
            Flag("flag_unreliable_logg", 2, "log g < -1 or log g > 10", _unreliable_logg),
            Flag("flag_unreliable_fe_h", 3, "Teff < 3200 K, log g > 5, or [Fe/H] outside -4 to +2",
                 _unreliable_fe_h),
            Flag("flag_suspicious_fe_h", 4, "[Fe/H] may be suspicious: Teff < 3900 K and 3 < log g < 6",
                 _suspicious_fe_h),
        ),
        warn_bits=("flag_unreliable_fe_h", "flag_suspicious_fe_h"),
        bad_bits=("flag_runtime_exception", "flag_unreliable_teff", "flag_unreliable_logg",
                  "flag_unreliable_fe_h"),
    )


BOSSNET_SCHEMA = bossnet_schema(
    "bossnet", "BossNet",
    "Stellar parameters from BossNet (Sizemore et al. 2024), a residual convolutional "
    "network applied to BOSS optical spectra interpolated onto a uniform 3800–8900 Å grid. "
    "Reported values are the prediction for the noise-free spectrum; uncertainties are the "
    "standard deviation over Monte Carlo noise draws of the spectrum.",
    v_r=True,
)
"""The BossNet schema: eight float columns, five flag bits."""


# The arithmetic of the network forward a run may ask for (torch-free, for the command line).
PRECISIONS = ("float32", "tf32", "bf16")  # float32 first: the default, as published


def check_precision(value: str | None) -> str:
    """A valid precision name: ``value``, or ``"float32"`` for None.

    Raises
    ------
    ValueError
        ``value`` is not one of :data:`PRECISIONS`.
    """
    if value is None:
        return PRECISIONS[0]
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {value!r}")
    return value
