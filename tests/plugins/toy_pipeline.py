"""A toy pipeline that lives only under tests/: proof that a pipeline is one declaration.

specq finds it through ``SPECQ_PLUGINS=toy_pipeline`` (with this folder on the Python path)
and then routes, stores, runs, exports, plots, benches and documents it like the built-in
ones. It imports from specq's pipeline API (:mod:`workers.api`) only, and declares none of
the optional spec fields (plots, baseline, options…): what every command does without them. The model
is two numbers in a ``.npy`` file: ``score = tanh(w0 · log10(mean flux) + w1 · S/N / 100)``,
and its Monte Carlo error comes from redrawing the flux within its noise.
"""
from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import numpy as np

from workers.api import Field, Flag, Pipeline, PipelineSpec, ResultSchema, row_values

TOY_SCHEMA = ResultSchema(
    pipeline="toy",
    exception_flag="flag_failed",
    description="A toy: mean flux, median S/N and a two-weight score of BOSS spectra.",
    fields=(
        Field("mean_flux", "float", "1e-17 erg / (s cm2 Angstrom)", "Mean finite flux"),
        Field("snr", "float", "", "Median flux × sqrt(ivar) over pixels with ivar > 0"),
        Field("score", "float", "", "tanh of the weighted features"),
        Field("e_score", "float", "", "Standard deviation of the score over the noise draws"),
    ),
    flags=(
        Flag("flag_failed", 0, "The spectrum could not be processed"),
        Flag("flag_low_snr", 1, "Median S/N below 5", lambda c: np.asarray(c["snr"], float) < 5),
    ),
    warn_bits=("flag_low_snr",),
    bad_bits=("flag_failed",),
)

SPEC = PipelineSpec(
    name="toy",
    title="Toy",
    instrument="boss",
    schema=TOY_SCHEMA,
    runner="toy_pipeline:ToyPipeline",
    queue="toyq",
    chunk_size=2,
    weights=("toy.npy",),
    default_draws=4,
    compare=("score",),
    summary_columns=("path", "hdu", "row", "mean_flux", "snr", "score", "result_flags"),
)


class ToyPipeline(Pipeline):
    """The toy model: two float weights from ``toy.npy`` (None: the seeded demo pair)."""

    spec = SPEC

    def __init__(self, weights=None, device=None, draws=None, seed=None, batch_size=None, precision=None):
        super().__init__(weights, device, draws, seed, batch_size, precision)
        if weights is None:
            self.w, self.demo = np.random.default_rng(7).normal(size=2), True
            self.model_sha256 = hashlib.sha256(self.w.tobytes()).hexdigest()
        else:
            self.w, self.demo = np.load(Path(weights)), False
            self.model_sha256 = hashlib.sha256(Path(weights).read_bytes()).hexdigest()

    def _predict(self, spectra, options):
        rows = []
        for s in spectra:
            flux, ivar = np.asarray(s.flux, float), np.asarray(s.ivar, float)
            good = np.isfinite(flux) & (ivar > 0)
            if not good.any():
                rows.append(self.failed_row("no pixel with finite flux and ivar > 0"))
                continue
            # The noise of a spectrum depends on the seed and its identity only.
            noise_seed = zlib.crc32(f"{options.seed}:{s.path}:{s.hdu}:{s.row}".encode())
            rng = np.random.default_rng(noise_seed if options.seed is not None else None)
            sigma = 1 / np.sqrt(ivar[good])
            draws = [self._score(flux[good] + rng.normal(0, sigma), ivar[good]) for _ in range(options.draws)]
            columns = {"mean_flux": flux[good].mean(), "snr": np.median(flux[good] * np.sqrt(ivar[good])),
                       "score": self._score(flux[good], ivar[good]),
                       "e_score": np.std(draws, ddof=1) if len(draws) > 1 else np.nan}
            columns["result_flags"] = int(self.schema.compute_flags({k: [v] for k, v in columns.items()})[0])
            rows.append(row_values(self.schema, columns))
        return rows

    def _score(self, flux, ivar) -> float:
        features = np.array([np.log10(max(abs(flux.mean()), 1e-30)), np.median(flux * np.sqrt(ivar)) / 100])
        return float(np.tanh(self.w @ features))
