"""The class that runs BossNet on Gaia XP coefficients, with correlated (Cholesky) Monte Carlo noise."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from workers.bossnet.fixed_grid import FixedGridPipeline
from workers.bossnet.pipeline import draw_noise
from workers.bossnet_gaia_xp.spec import SPEC
from workers.pipeline import Options
from workers.spectrum import Spectrum

BANDS = ("bp", "rp")


def covariance(errors: np.ndarray, correlations: np.ndarray) -> np.ndarray:
    """One band's covariance (float32) from its coefficient errors and the lower triangle of its correlations.

    ``correlations`` lists the strict lower triangle row by row ((1,0), (2,0), (2,1), …),
    as the network's authors read the Gaia column.
    """
    errors = np.asarray(errors, dtype=np.float32)
    n = len(errors)
    cov = np.diag(errors * errors)
    rows, cols = np.tril_indices(n, -1)
    cov[rows, cols] = np.asarray(correlations, dtype=np.float32) * errors[rows] * errors[cols]
    cov[cols, rows] = cov[rows, cols]
    return cov


class BossNetGaiaXpPipeline(FixedGridPipeline):
    """BossNet on Gaia DR3 XP continuous spectra (see :mod:`workers.bossnet_gaia_xp.spec`)."""

    spec = SPEC
    source = "gaia_xp"
    # 110 coefficients a spectrum: too little work to split, and the Cholesky draws of a
    # batch go through one batched product.
    inputs_side_by_side = False

    def usable_arrays(self, spectrum: Spectrum) -> tuple | str:
        checked = super().usable_arrays(spectrum)
        if isinstance(checked, str):
            return checked
        flux, error = checked
        n = len(flux) // 2
        given = np.asarray(spectrum.flux, dtype=np.float64).ravel()
        for i, band in enumerate(BANDS):
            if not np.isfinite(given[i * n:(i + 1) * n]).any():  # a band that is missing, not a NaN here and there
                return f"no {band.upper()} coefficients (none of the {n} is a number)"
        try:
            covs = tuple(covariance(np.asarray(spectrum.error, np.float32)[i * n:(i + 1) * n],
                                    spectrum.meta[f"{band}_coefficient_correlations"])
                         for i, band in enumerate(BANDS))
        except (KeyError, ValueError, IndexError) as exc:
            return f"no usable BP/RP coefficient correlations ({type(exc).__name__}: {exc})"
        return flux, error, covs

    def network_inputs(self, spectra: Sequence[Spectrum], arrays: Sequence[tuple], options: Options):
        import torch

        flux = torch.from_numpy(np.stack([a[0] for a in arrays])).to(self.device)
        rows = flux[:, None, :]
        ok = torch.ones(len(arrays), dtype=torch.bool, device=self.device)
        if options.draws:
            n = flux.shape[1] // 2
            z = draw_noise(spectra, [flux.shape[1]] * len(spectra), options.draws, options.seed).to(self.device)
            noise = []
            for i in range(len(BANDS)):  # each band its own factor and its own normals
                cov = torch.from_numpy(np.stack([a[2][i] for a in arrays])).to(self.device)
                factor, info = torch.linalg.cholesky_ex(cov)
                ok &= info == 0  # a covariance that is not positive definite: no draws for that spectrum
                noise.append(torch.einsum("bij,bdj->bdi", factor, z[..., i * n:(i + 1) * n]))
            rows = torch.cat([rows, flux[:, None, :] + torch.cat(noise, dim=2)], dim=1)
        ok &= torch.isfinite(rows).all(dim=2).all(dim=1)
        return torch.nan_to_num(rows), ok
