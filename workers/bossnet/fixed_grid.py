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
