"""The straightforward way to run the AstroNN distance network, for benchmarks.

What a direct port of the reference pipeline does: normalize each spectrum on its own,
run ``passes`` separate forward passes over the batch in a Python loop with the module in
``train()`` mode (so ``F.dropout`` draws fresh masks from torch's global generator), then
compute distances one star at a time. Results agree with
:class:`~workers.astronn_dist.pipeline.AstroNNDistPipeline` statistically, not bit for
bit (different dropout masks).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from workers import row as result_row
from workers.astronn_dist.network import ApogeeDistBCNN
from workers.astronn_dist.photometry import SourceCatalog, star_photometry
from workers.astronn_dist.pipeline import NormalizationError, _raw_arrays, normalize, summarize_passes
from workers.astronn_dist.schema import ASTRONN_DIST_SCHEMA
from workers.spectrum import Spectrum


def baseline_predict(model: ApogeeDistBCNN, spectra: Sequence[Spectrum], passes: int = 100,
                     seed: int = 0, catalog: SourceCatalog | None = None) -> list[dict[str, Any]]:
    """Rows like the pipeline's, computed the simple way.

    Parameters
    ----------
    model : ApogeeDistBCNN
        Loaded network (left in ``eval()`` mode afterwards).
    spectra : sequence of Spectrum
    passes : int
        MC dropout passes (one full forward over the batch each).
    seed : int
        Seeds torch's global generator.
    catalog : SourceCatalog, optional

    Returns
    -------
    list of dict
        Schema fields, ``result_flags``, ``flag_warn``, ``flag_bad``; an ``error`` key and
        ``flag_no_result`` for a spectrum that cannot be normalized.
    """
    rows: list[dict[str, Any] | None] = [None] * len(spectra)
    norm, ok = [], []
    for i, s in enumerate(spectra):
        try:
            flux, err, bitmask = _raw_arrays(s)
            norm.append(normalize(flux, err, bitmask)[0][0])
            ok.append(i)
        except (NormalizationError, ValueError, ArithmeticError, OSError) as exc:
            rows[i] = _failed(str(exc))
    if ok:
        device = model.input_mean.device
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed_all(seed)
        x = model.standardize(np.stack(norm))
        model.train()
        try:
            with torch.no_grad():
                outs = [model(x) for _ in range(passes)]
        finally:
            model.eval()
        pred = torch.stack([p for p, _ in outs], dim=1).cpu().numpy()
        logvar = torch.stack([v for _, v in outs], dim=1).cpu().numpy()
        labels_std = float(model.labels_std[0])
        for k, i in enumerate(ok):  # one star at a time
            p = star_photometry(spectra[i], catalog)
            cols = summarize_passes(pred[k:k + 1], logvar[k:k + 1], labels_std,
                                    [np.nan if p.missing_k_mag else p.k_mag],
                                    [np.nan if p.missing_ebv else p.ebv],
                                    [p.plx], [p.e_plx], [p.gdr3_zeropoint])
            rows[i] = result_row.values(ASTRONN_DIST_SCHEMA, {k: v[0] for k, v in cols.items()})
    return rows  # type: ignore[return-value]


def _failed(reason: str) -> dict[str, Any]:
    return result_row.values(ASTRONN_DIST_SCHEMA, error=reason)


def run_baseline(pipeline, spectra: Sequence[Spectrum], options) -> list[dict[str, Any]]:
    """``specq bench``'s yardstick, in the engine's batch size.

    One forward over every spectrum at once would make the baseline's speed depend on
    ``--spectra`` (slower once a pass outgrows the caches).

    Parameters
    ----------
    pipeline : AstroNNDistPipeline
        Supplies the loaded network, its batch size and its catalog.
    spectra : sequence of Spectrum
    options : workers.pipeline.Options
        Passes and seed (each batch seeds torch's generator with seed + its offset).
    """
    size = pipeline.batch_size
    seed = options.seed or 0
    return [row for i in range(0, len(spectra), size)
            for row in baseline_predict(pipeline.model, spectra[i:i + size], passes=options.draws, seed=seed + i,
                                        catalog=getattr(pipeline, "catalog", None))]
