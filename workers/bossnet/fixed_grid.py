"""BossNet-family pipelines whose spectra reach the network on their own pixel grid (APOGEE, Gaia).

No interpolation: the network takes the spectrum's pixels as they are, so every spectrum of
a source must have the source's pixel count (:attr:`~workers.bossnet.sources.Source.input_length`).

- APOGEE (``scaling="log"``): flux and error with NaN and ±inf set to 0, then each row
  (the noise-free one and each draw) log-scaled on its own, as BOSS spectra are.
- Gaia (``scaling="none"``): flux and error with NaN set to 1, to the network unscaled.

Draws: ``flux + error · z`` per pixel (z standard normal), seeded per spectrum as BossNet's
(:func:`workers.bossnet.pipeline.draw_noise`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from workers.bossnet.pipeline import BossNetPipeline, draw_noise
from workers.pipeline import Options
from workers.spectrum import Spectrum


def flux_and_error(spectrum: Spectrum) -> tuple[np.ndarray, np.ndarray | None]:
    """The spectrum's flux and 1-sigma error (from ``ivar`` where no error is given), float32."""
    flux = np.asarray(spectrum.flux, dtype=np.float32).ravel()
    if spectrum.error is not None:
        return flux, np.asarray(spectrum.error, dtype=np.float32).ravel()
    if spectrum.ivar is None:
        return flux, None
    ivar = np.asarray(spectrum.ivar, dtype=np.float64).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        return flux, np.where(ivar > 0, ivar ** -0.5, np.inf).astype(np.float32)


class FixedGridPipeline(BossNetPipeline):
    """A BossNet-family source whose network input is the spectrum's own pixels (see the module docstring)."""

    source = "apogee"  # each subclass names its own

    def usable_arrays(self, spectrum: Spectrum) -> tuple | str:
        facts = self.source_facts
        flux, error = flux_and_error(spectrum)
        if error is None:
            return "no flux error (or ivar) for the flux"
        if not (len(flux) == len(error) == facts.input_length):
            return (f"the {facts.name} network takes {facts.input_length} pixels, the spectrum has "
                    f"{len(flux)} flux and {len(error)} error values")
        if not np.isfinite(flux).any():
            return "no finite flux value"
        if facts.scaling == "log":  # APOGEE: every non-finite value becomes 0
            return (np.nan_to_num(flux, nan=0.0, posinf=0.0, neginf=0.0),
                    np.nan_to_num(error, nan=0.0, posinf=0.0, neginf=0.0))
        return np.where(np.isnan(flux), 1.0, flux).astype(np.float32), np.where(np.isnan(error), 1.0, error).astype(np.float32)

    def network_inputs(self, spectra: Sequence[Spectrum], arrays: Sequence[tuple], options: Options):
        import torch

        from workers.bossnet.preprocess import log_scale_t

        flux = torch.from_numpy(np.stack([a[0] for a in arrays])).to(self.device)
        rows = flux[:, None, :]
        if options.draws:
            error = torch.from_numpy(np.stack([a[1] for a in arrays])).to(self.device)
            z = draw_noise(spectra, [flux.shape[1]] * len(spectra), options.draws, options.seed).to(self.device)
            rows = torch.cat([rows, flux[:, None, :] + error[:, None, :] * z], dim=1)
        x = log_scale_t(rows) if self.source_facts.scaling == "log" else rows
        ok = torch.isfinite(x).all(dim=2).all(dim=1)
        return torch.nan_to_num(x), ok


def run_baseline(pipeline: FixedGridPipeline, spectra: Sequence[Spectrum], options: Options) -> list[dict]:
    """``specq bench``'s yardstick for these sources, as the authors' code runs: one spectrum at a time,
    the direct convolutions, one forward pass for the noise-free input and one for all its draws.

    The inputs (noise included) are the pipeline's own, so the two agree to float32 rounding.
    """
    import torch

    from workers.bossnet.baseline import _direct
    from workers.bossnet.pipeline import convert_outputs, rows_from_columns

    rows: list[dict] = []
    with torch.inference_mode(), _direct(pipeline.model):
        for spectrum in spectra:
            arrays = pipeline.usable_arrays(spectrum)
            if isinstance(arrays, str):
                rows.append({"error": arrays})
                continue
            x, ok = pipeline.network_inputs([spectrum], [arrays], options)
            if not bool(ok[0]):
                rows.append({"error": "no usable values in the noise draws"})
                continue
            nominal = pipeline.model(x[:, :1].reshape(1, 1, -1)).cpu().numpy()
            draws = x[0, 1:, None, :]
            outs = pipeline.model(draws).cpu().numpy() if len(draws) else np.zeros((0, nominal.shape[1]), np.float32)
            rows.extend(rows_from_columns(convert_outputs(nominal, outs[None], pipeline.source_facts, pipeline.schema),
                                          pipeline.schema))
    return rows
