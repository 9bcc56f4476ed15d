"""The AstroNN distances result, declared once (fields, units, flag bits).

Every field has the name, unit and type of the SDSS summary product
``astraAllStarAstroNNdist`` (DR19/DR20), in the pipeline, the store and the files alike
(``a_k_mag``, ``L_fakemag_err``, ``nn_dist``, ``nn_dist_err``); ``Field.formerly`` names
the store columns older stores have, which the store renames.

Imports numpy only: producers and the result store read this module.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from workers.schema import Field, Flag, ResultSchema

# Relative fakemag error at and above which a result is flagged unreliable.
FAKEMAG_UNRELIABLE = 0.2


def _column(columns: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """A boolean helper column, all False when the caller did not pass it."""
    if name in columns:
        return np.asarray(columns[name], dtype=bool)
    n = len(next(iter(columns.values()))) if columns else 0
    return np.zeros(n, dtype=bool)


def _fakemag_unreliable(c: Mapping[str, np.ndarray]) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(c["L_fakemag_err"], float) / np.asarray(c["L_fakemag"], float) >= FAKEMAG_UNRELIABLE


ASTRONN_DIST_SCHEMA = ResultSchema(
    pipeline="astronn_dist",
    product="AstroNNdist",
    exception_flag="flag_no_result",
    description=(
        "Distances from the astroNN Bayesian CNN (Leung & Bovy 2019) applied to APOGEE "
        "coadded spectra: the network predicts the Ks-band pseudo-luminosity "
        "L_fakemag = 10^(0.2·M_Ks + 2) with Monte Carlo dropout; with the 2MASS Ks "
        "magnitude and E(B−V) it gives dist = 1000·10^(0.2·(k_mag − a_k_mag)) / L_fakemag pc."
    ),
    fields=(
        Field("k_mag", "float", "mag", "2MASS Ks-band apparent magnitude used (0 where missing)"),
        Field("ebv", "float", "mag", "E(B-V) reddening used (0 where missing)"),
        # The data model gives a_k_mag no unit (it is in mag): its spelling is kept.
        Field("a_k_mag", "float", "", "Ks-band extinction in mag, 0.3517·E(B-V)", formerly=("A_k_mag",)),
        Field("L_fakemag", "float", "",
              "Predicted (fake) Ks-band absolute luminosity, L_fakemag = 10^(0.2·M_Ks + 2)"),
        Field("L_fakemag_err", "float", "",
              "Total error on L_fakemag: predictive (mean log variance) and MC dropout scatter",
              formerly=("e_L_fakemag",)),
        Field("nn_dist", "float", "pc", "NN heliocentric distance", formerly=("dist",)),
        Field("nn_dist_err", "float", "pc", "NN heliocentric distance error", formerly=("e_dist",)),
    ),
    extra_fields=(
        Field("L_fakemag_model_err", "float", "", "Model (MC dropout) error on L_fakemag"),
        Field("nn_parallax", "float", "mas", "NN parallax, 1000 / dist"),
        Field("nn_parallax_err", "float", "mas", "NN parallax error (from L_fakemag_err)"),
        Field("nn_parallax_model_err", "float", "mas",
              "NN model (MC dropout) error in parallax, the weight of nn_parallax in weighted_parallax"),
        Field("gdr3_parallax_w_zp", "float", "mas", "Gaia DR3 zero-point-corrected parallax"),
        Field("gdr3_parallax_err", "float", "mas", "Gaia DR3 parallax error"),
        Field("gdr3_zeropoint", "float", "mas", "Gaia DR3 parallax zero-point offset subtracted"),
        Field("weighted_parallax", "float", "mas",
              "Inverse-variance weighted mean of nn_parallax and gdr3_parallax_w_zp"),
        Field("weighted_parallax_err", "float", "mas", "Weighted parallax error"),
        Field("weighted_dist", "float", "pc", "Weighted distance, 1000 / weighted_parallax"),
        Field("weighted_dist_err", "float", "pc", "Weighted distance error"),
    ),
    flags=(
        Flag("flag_fakemag_unreliable", 0,
             f"Predicted fake Ks luminosity is unreliable (L_fakemag_err / L_fakemag >= {FAKEMAG_UNRELIABLE})",
             _fakemag_unreliable),
        Flag("flag_missing_photometry", 1,
             "Missing Ks-band apparent magnitude (absent, non-finite, >= 98 or <= -1); 0 used",
             lambda c: _column(c, "missing_k_mag")),
        Flag("flag_missing_extinction", 2,
             "Missing extinction E(B-V) (absent, non-finite, >= 98 or <= 0); 0 used",
             lambda c: _column(c, "missing_ebv")),
        Flag("flag_no_result", 11, "The spectrum could not be loaded or normalized"),
    ),
    warn_bits=("flag_missing_extinction",),
    bad_bits=("flag_fakemag_unreliable", "flag_missing_photometry", "flag_no_result"),
)
"""The AstroNN distances schema. Flag conditions read the float columns plus two boolean
helper columns, ``missing_k_mag`` and ``missing_ebv``, which the pipeline passes to
:meth:`~workers.schema.ResultSchema.compute_flags` (they are not stored)."""
