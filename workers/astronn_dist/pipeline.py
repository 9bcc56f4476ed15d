"""AstroNN distances: APOGEE coadded spectrum → fakemag (MC dropout) → distance, per star.

Steps, for a batch of spectra:

1. continuum normalization: astroNN's ``apogee_continuum(..., dr=17)`` arithmetic,
   batched (:mod:`workers.astronn_dist.continuum`, equal to the library call bit for
   bit); a spectrum that cannot be normalized gets a ``flag_no_result`` row and the rest
   of the batch goes on;
2. the network, the Monte Carlo dropout passes folded into the batch dimension
   (:meth:`~workers.astronn_dist.network.ApogeeDistBCNN.mc_forward`, stepping through
   256 pass rows a step, side by side on a CPU, 4096 on a GPU), each spectrum's masks hashed from
   its own seed;
3. :func:`summarize_passes`: fakemag and its error from the passes, then each star's
   distance from *its own* photometry (astroNN's ``fakemag_to_pc`` arithmetic,
   :func:`~workers.astronn_dist.photometry.fakemag_distance`), parallaxes, the
   Gaia-weighted parallax, and the flags.

Computing distances loads no TensorFlow: ``astroNN.gaia`` (which would, ~4 s and ~700 MB
resident) is not imported.
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from workers import row as result_row
from workers.astronn_dist.astronn import astronn_apogee
from workers.astronn_dist.continuum import normalize_batch
from workers.astronn_dist.photometry import (
    Photometry,
    SourceCatalog,
    clean_photometry,
    corrected_parallax,
    fakemag_distance,
    star_photometry,
)
from workers.astronn_dist.schema import ASTRONN_DIST_SCHEMA
from workers.astronn_dist.spec import SPEC
from workers.astronn_dist.minimum import MINIMUM
from workers.pipeline import Options, Pipeline
from workers.spectrum import Spectrum

log = logging.getLogger(__name__)

N_RAW_PIXELS = 8575  # apStar / mwmStar APOGEE log-lambda grid
APOGEE_DR = 17
MAX_DIST_PC = 1e10  # larger "distances" are numerical garbage → NaN


class NormalizationError(ValueError):
    """A spectrum is not usable input for the continuum normalization."""


# -- normalization --------------------------------------------------------------------

def _raw_arrays(spectrum: Spectrum) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flux, error and bitmask of one spectrum, checked for the continuum normalization."""
    if spectrum.flux is None:
        raise NormalizationError("no flux")
    flux = np.asarray(spectrum.flux, dtype=np.float64).ravel()
    if flux.size != N_RAW_PIXELS:
        raise NormalizationError(f"{flux.size} pixels, expected {N_RAW_PIXELS} (APOGEE apStar grid)")
    if spectrum.error is not None:
        err = np.asarray(spectrum.error, dtype=np.float64).ravel()
    elif spectrum.ivar is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            err = np.asarray(spectrum.ivar, dtype=np.float64).ravel() ** -0.5
    else:
        raise NormalizationError("no flux error or inverse variance")
    if err.size != N_RAW_PIXELS:
        raise NormalizationError(f"error has {err.size} pixels, expected {N_RAW_PIXELS}")
    if spectrum.bitmask is None:
        bitmask = np.zeros(N_RAW_PIXELS, dtype=np.int64)  # same as no bitmask: nothing masked
    else:
        bitmask = np.asarray(spectrum.bitmask).ravel().astype(np.int64)
        if bitmask.size != N_RAW_PIXELS:
            raise NormalizationError(f"bitmask has {bitmask.size} pixels, expected {N_RAW_PIXELS}")
    with np.errstate(invalid="ignore"):
        if not np.any(np.isfinite(flux) & (flux > 0)):
            raise NormalizationError("no finite, positive flux")
    return flux, err, bitmask


def normalize(flux: np.ndarray, err: np.ndarray, bitmask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``astroNN.apogee.apogee_continuum(flux, err, bitmask=bitmask, dr=17)``, the library call, quietly.

    The pipeline uses the batched equivalent (:func:`~workers.astronn_dist.continuum.normalize_batch`);
    this is the reference it is tested against, and the baseline's way. Accepts one spectrum
    (8575,) or a batch (B, 8575); returns (B, 7514) arrays.
    """
    apogee = astronn_apogee()
    with np.errstate(all="ignore"):  # division by a zero continuum is handled by astroNN
        norm, norm_err = apogee.apogee_continuum(flux, err, bitmask=bitmask, dr=APOGEE_DR)
    return np.atleast_2d(norm), np.atleast_2d(norm_err)


def normalize_spectra(spectra: Sequence[Spectrum]) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """Continuum-normalize a batch; spectra that cannot be normalized are set aside.

    Returns
    -------
    norm_flux : ndarray
        (n_ok, 7514), in the order of ``ok``.
    ok : list of int
        Indices (into ``spectra``) of the normalized spectra.
    failed : dict
        Index → reason for the others.
    """
    failed: dict[int, str] = {}
    inputs, ok = [], []
    for i, s in enumerate(spectra):
        try:
            arrays = _raw_arrays(s)
            if s.wavelength is not None and (short := MINIMUM.shortfall(s.wavelength, arrays[0])):
                failed[i] = short  # below the least data the network answers for: no answer
                continue
            inputs.append(arrays)
            ok.append(i)
        except NormalizationError as exc:
            failed[i] = f"cannot normalize {s.path} hdu {s.hdu} row {s.row}: {exc}"
    if not ok:
        return np.empty((0, 0)), [], failed
    flux, err, bitmask = (np.stack(a) for a in zip(*inputs))
    norm, fit_failed = normalize_batch(flux, err, bitmask, dr=APOGEE_DR)
    rows = [None if k in fit_failed else norm[k] for k in range(len(ok))]
    for k, reason in fit_failed.items():
        s = spectra[ok[k]]
        failed[ok[k]] = f"cannot normalize {s.path} hdu {s.hdu} row {s.row}: {reason}"
    keep = []
    for k, i in enumerate(ok):
        r = rows[k]
        if r is None:
            continue
        if np.all(r == 1.0):  # astroNN fills a failed continuum fit with its mask value
            s = spectra[i]
            failed[i] = f"cannot normalize {s.path} hdu {s.hdu} row {s.row}: continuum fit failed"
            continue
        keep.append((i, r))
    if not keep:
        return np.empty((0, 0)), [], failed
    return np.stack([r for _, r in keep]), [i for i, _ in keep], failed


# -- from passes to results ----------------------------------------------------------

def _floats(values, n: int) -> np.ndarray:
    """``values`` (None, a scalar or n values; None entries = NaN) as n floats."""
    if values is None:
        return np.full(n, np.nan)
    arr = np.array([np.nan if v is None else v for v in np.atleast_1d(np.asarray(values, dtype=object))],
                   dtype=float)
    if arr.size == 1:
        return np.full(n, arr[0])
    if arr.size != n:
        raise ValueError(f"{arr.size} values for {n} spectra")
    return arr


def summarize_passes(pred, logvar, labels_std, k_mag, ebv, plx=None, e_plx=None,
                     zeropoint=None) -> dict[str, np.ndarray]:
    """Every result column from the per-pass network outputs and each star's photometry.

    Parameters
    ----------
    pred, logvar : array_like
        (B, P) per-pass predictions (after softplus, before × labels_std) and log variances.
    labels_std : float or array_like
        The network's label scale (fakemag units).
    k_mag, ebv : array_like
        (B,) raw per-star values; None/NaN = absent. The missing-value rules are applied
        here (missing → 0 and flagged).
    plx, e_plx : array_like, optional
        (B,) Gaia DR3 parallax and error in mas (NaN = none), before zero-point correction.
    zeropoint : array_like, optional
        (B,) per-star parallax zero-point in mas; NaN/None → the median −0.03464 mas.

    Returns
    -------
    dict of ndarray
        The schema's fields and extra fields, ``L_fakemag_model_err``, ``result_flags``,
        ``flag_warn``, ``flag_bad``, ``missing_k_mag``, ``missing_ebv``; one value per star.

    Notes
    -----
    ``L_fakemag = mean(pred)·labels_std``;
    ``L_fakemag_err = sqrt(exp(mean(logvar)) + var(pred, ddof=1))·labels_std``; the model
    (MC dropout) error ``sd(pred, ddof=1)·labels_std`` weighs the NN parallax against Gaia's.
    Distances are ``astroNN.gaia.fakemag_to_pc(L_fakemag, k_mag − a_k_mag, e)``'s
    (:func:`~workers.astronn_dist.photometry.fakemag_distance`) with each star's own
    magnitude; impossible values (astroNN's magic number) and distances above 1e10 pc → NaN.
    """
    pred = np.atleast_2d(np.asarray(pred, dtype=np.float64))
    logvar = np.atleast_2d(np.asarray(logvar, dtype=np.float64))
    n = pred.shape[0]
    scale = _floats(labels_std, n)
    passes = pred.shape[1]
    model_var = pred.var(axis=1, ddof=1) if passes > 1 else np.zeros(n)
    L = pred.mean(axis=1) * scale
    e_L = np.sqrt(np.exp(logvar.mean(axis=1)) + model_var) * scale
    e_L_model = np.sqrt(model_var) * scale

    out: dict[str, np.ndarray] = dict(clean_photometry(k_mag, ebv))
    if out["k_mag"].shape != (n,):
        raise ValueError(f"{out['k_mag'].size} magnitudes for {n} spectra")
    mag = out["k_mag"] - out["a_k_mag"]  # every star its own extinction-corrected magnitude

    dist, e_dist, nn_plx, nn_plx_err = fakemag_distance(L, mag, e_L)
    nn_plx_model_err = fakemag_distance(L, mag, e_L_model)[3]
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(dist) | (dist > MAX_DIST_PC)
        e_bad = bad | ~np.isfinite(e_dist) | (e_dist > MAX_DIST_PC)
    nan = np.full(n, np.nan)
    out.update(L_fakemag=L, L_fakemag_err=e_L, L_fakemag_model_err=e_L_model,
               nn_dist=np.where(bad, nan, dist), nn_dist_err=np.where(e_bad, nan, e_dist))
    nn_plx = np.where(bad, nan, nn_plx)
    nn_plx_err = np.where(e_bad, nan, nn_plx_err)
    nn_plx_model_err = np.where(bad, nan, nn_plx_model_err)
    out.update(nn_parallax=nn_plx, nn_parallax_err=nn_plx_err, nn_parallax_model_err=nn_plx_model_err)

    # Gaia: zero-point-corrected parallax, combined with the NN parallax by inverse
    # variance (NN side weighted by its model error, as in the SDSS pipeline). Where
    # either parallax is missing the weighted values are NaN, as in the SDSS product.
    gdr3 = corrected_parallax(_floats(plx, n), _floats(e_plx, n),
                              None if zeropoint is None else _floats(zeropoint, n))
    out.update(gdr3)
    with np.errstate(divide="ignore", invalid="ignore"):
        w_nn = 1.0 / nn_plx_model_err**2
        w_gaia = 1.0 / gdr3["gdr3_parallax_err"] ** 2
        total = w_nn + w_gaia
        weighted = (nn_plx * w_nn + gdr3["gdr3_parallax_w_zp"] * w_gaia) / total
        weighted_err = np.sqrt(1.0 / total)
        weighted_dist = 1000.0 / weighted
        weighted_dist_err = weighted_dist * weighted_err / weighted
        far = ~(weighted_dist <= MAX_DIST_PC) | ~(weighted_dist_err <= MAX_DIST_PC)
    out.update(weighted_parallax=weighted, weighted_parallax_err=weighted_err,
               weighted_dist=np.where(far, nan, weighted_dist),
               weighted_dist_err=np.where(far, nan, weighted_dist_err))

    schema = ASTRONN_DIST_SCHEMA
    flags = schema.compute_flags({k: out[k] for k in
                                  ("L_fakemag", "L_fakemag_err", "missing_k_mag", "missing_ebv")})
    warn, bad_flag = schema.summary(flags)
    out.update(result_flags=flags, flag_warn=warn, flag_bad=bad_flag)
    return out


# -- the pipeline ---------------------------------------------------------------------

def _resolve_catalog(catalog) -> SourceCatalog | None:
    """A SourceCatalog from an instance or a path; None or False: no catalog."""
    if catalog is None or catalog is False:
        return None
    if isinstance(catalog, SourceCatalog):
        return catalog
    return SourceCatalog.from_file(catalog)


class AstroNNDistPipeline(Pipeline):
    """The AstroNN distance network with Monte Carlo dropout, per-star photometry.

    Parameters
    ----------
    weights : path-like, optional
        The published ``.pt`` (``{"model_state_dict": ...}``) or the demo weights.
    device : str, optional
        None → CUDA when available.
    draws : int, optional
        MC dropout passes per spectrum (default 100).
    seed : int, optional
        Each spectrum's dropout masks are seeded from (seed, path, hdu, row): results are
        reproducible and do not depend on the batch. None → fresh randomness per batch.
    batch_size : int, optional
        Spectra per normalization + network step, also the engine's batch size
        (None → 32 on a CPU, 256 on a GPU). The network bounds its own memory by
        stepping through pass rows.
    catalog : SourceCatalog, path-like, False or None
        Source catalog for k_mag/ebv/plx; None or False → none (the engine passes
        ``Settings.catalog``, ``SPECQ_CATALOG``).
    """

    spec = SPEC

    def __init__(self, weights=None, device: str | None = None, draws: int | None = None,
                 seed: int | None = None, batch_size: int | None = None, catalog=None):
        super().__init__(weights, device, draws, seed, batch_size)
        from workers.astronn_dist.network import load_astronn_dist  # torch: workers only

        self.model, loaded = load_astronn_dist(self.required_weights(weights), device)
        self.device = self.model.input_mean.device
        self.model_sha256 = loaded.sha256
        self.demo = loaded.demo
        self.weights_source = loaded.source
        if loaded.unexpected:
            log.warning("astronn_dist weights %s: ignored unexpected key(s) %s",
                        loaded.source, ", ".join(loaded.unexpected))
        self.labels_std = float(self.model.labels_std[0])
        self.catalog = _resolve_catalog(catalog)
        if self.batch_size is None:
            # Enough spectra per call to batch the normalization and amortize Python
            # overhead; a GPU steps through 4096 pass rows at a time, so give it more.
            self.batch_size = 256 if self.device.type == "cuda" else 32

    def photometry(self, spectrum: Spectrum) -> Photometry:
        """One star's photometry: reference, then catalog, then header."""
        return star_photometry(spectrum, self.catalog)

    #: The engine fits the continua of the next batch (:meth:`prepare`, in its reading thread)
    #: while the network runs this one: the fit then leaves no core idle.
    prepares_ahead = True

    def _predict(self, spectra: list[Spectrum], options: Options) -> list[dict[str, Any]]:
        """One row per spectrum: every schema field, ``result_flags``, ``flag_warn``, ``flag_bad``.

        A spectrum that cannot be normalized gets :meth:`failed_row` (``flag_no_result``)
        without failing the others.
        """
        return self._finish(self._prepare(spectra, options))

    def _prepare(self, spectra: list[Spectrum], options: Options) -> list[_Step]:
        """Continuum fits, network inputs, seeds and photometry, step by step of :attr:`batch_size` spectra."""
        size = self.batch_size or max(1, len(spectra))
        base_seed = options.seed if options.seed is not None else secrets.randbits(63)
        return [self._prepare_step(spectra[start:start + size], base_seed, options.draws)
                for start in range(0, len(spectra), size)]

    def _finish(self, prepared: list[_Step]) -> list[dict[str, Any]]:
        """The network's passes of every step, then the rows."""
        return [row for step in prepared for row in self._finish_step(step)]

    def _prepare_step(self, spectra: list[Spectrum], base_seed: int, passes: int) -> _Step:
        from workers.astronn_dist.network import spectrum_seed

        rows: list[dict[str, Any] | None] = [None] * len(spectra)
        norm, ok, failed = normalize_spectra(spectra)
        for i, reason in failed.items():
            rows[i] = self.failed_row(reason)
        if not ok:
            return _Step(rows, ok, passes)
        seeds = [spectrum_seed(base_seed, spectra[i].path, spectra[i].hdu, spectra[i].row) for i in ok]
        return _Step(rows, ok, passes, self.model.standardize(norm), seeds, [self.photometry(spectra[i]) for i in ok])

    def _finish_step(self, step: _Step) -> list[dict[str, Any]]:
        rows = step.rows
        if step.ok:
            pred, logvar = self.model.mc_forward(step.x, step.passes, step.seeds)
            phot = step.photometry
            cols = summarize_passes(
                pred.numpy(), logvar.numpy(), self.labels_std,
                k_mag=[np.nan if p.missing_k_mag else p.k_mag for p in phot],
                ebv=[np.nan if p.missing_ebv else p.ebv for p in phot],
                plx=[p.plx for p in phot], e_plx=[p.e_plx for p in phot],
                zeropoint=[p.gdr3_zeropoint for p in phot])
            for k, i in enumerate(step.ok):
                rows[i] = result_row.values(self.schema, {name: v[k] for name, v in cols.items()})
        return rows  # type: ignore[return-value]


@dataclass
class _Step:
    """One step of :attr:`AstroNNDistPipeline.batch_size` spectra, ready for the network."""

    rows: list[dict[str, Any] | None]  # failed rows already in place
    ok: list[int]  # spectra (indices into the step) the network runs on
    passes: int
    x: Any = None  # network input (n_ok, 7514), on the model's device
    seeds: list[int] = field(default_factory=list)
    photometry: list[Photometry] = field(default_factory=list)
