"""BossNet preprocessing: inverse variance → error, noise draws, interpolation, log scaling.

Two implementations of ``shared/spec/bossnet.md`` (Preprocessing, Monte Carlo):

* plain numpy functions for one spectrum (:func:`error_from_ivar`, :func:`interpolate`,
  :func:`log_scale`, :func:`preprocess_one`, :func:`noised_log_scaled`): the reference the
  tests and the baseline use;
* :func:`build_inputs`: the same steps as batched torch operations on the model's device,
  for B spectra of different lengths (padded, with a mask) and all their noise draws at
  once, giving the ``(B, 1 + draws, 3900)`` network input without a Python loop per draw.

Numerical conventions follow the reference deployment (the vectors check them): the
wavelength is cast to float32 before interpolating, the interpolation itself runs in
float64 (numpy ``interp`` on float32 input) and its result is float32, the error and the
noise are float32, and q95 is computed the way ``torch.quantile`` does it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # torch loads only with the batched functions
    import torch

GRID_START, GRID_END, GRID_SIZE = 3800.0, 8900.0, 3900
FLUX_FLOOR = 1e-6  # log scaling clips below this
QUANTILE = 0.95
ERROR_CLIP = 5.0  # errors are clipped at 5 × the median finite error
DEFAULT_ERROR_FRACTION = 0.1  # all errors infinite → 0.1 × median(flux)


def wavelength_grid(start: float = GRID_START, end: float = GRID_END, n: int = GRID_SIZE) -> np.ndarray:
    """The uniform input grid, float32, bit for bit what the reference's ``torch.linspace`` gave.

    torch computes ``start + i·step`` for the first half and ``end − (n−1−i)·step`` for the
    second, each as one fused multiply-add on a float32 ``step``. The products are exact in
    float64, so rounding the float64 result once reproduces it on any machine. (``np.linspace``
    differs in 344 of the 3900 values by one float32 ulp.)
    """
    step = float(np.float32(np.float32(end - start) / np.float32(n - 1)))
    i = np.arange(n, dtype=np.float64)
    return np.where(i < n // 2, start + i * step, end - (n - 1 - i) * step).astype(np.float32)


GRID = wavelength_grid()


# -- numpy reference, one spectrum ---------------------------------------------------

def clean_flux(flux: np.ndarray) -> np.ndarray:
    """Step 1: float32 flux with NaN → 0 (±inf → ±float32 max, as ``np.nan_to_num``)."""
    return np.nan_to_num(np.asarray(flux, dtype=np.float32), nan=0.0)


def error_from_ivar(ivar: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """Step 2: 1-sigma error (float32) from the inverse variance.

    Parameters
    ----------
    ivar : ndarray
        Inverse variance; NaN counts as 0 (→ infinite error), negative gives NaN.
    flux : ndarray
        The cleaned flux (:func:`clean_flux`), for the all-infinite fallback.
    """
    ivar = np.nan_to_num(np.asarray(ivar, dtype=np.float32))
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.sqrt(np.float32(1.0) / ivar)
    if np.isinf(err).all():
        err = np.full(err.shape, np.median(flux) * np.float32(DEFAULT_ERROR_FRACTION), dtype=np.float32)
    finite = err[np.isfinite(err)]
    m = np.median(finite) if finite.size else np.float32(np.nan)
    cap = np.float32(ERROR_CLIP) * m
    err = np.minimum(err, cap)  # NaN cap (no finite error) makes every error NaN
    return np.where(np.isnan(err), cap, err).astype(np.float32)


def interpolate(wavelength: np.ndarray, flux: np.ndarray, grid: np.ndarray = GRID) -> np.ndarray:
    """Step 3: ``np.interp`` onto the grid (float32 out), ignoring NaN flux pixels.

    The last axis is the pixel axis; leading axes are looped over (reference speed).
    """
    wl = np.asarray(wavelength).astype(np.float32)
    flux = np.asarray(flux)
    if flux.ndim > 1:
        return np.stack([interpolate(wl, row, grid) for row in flux])
    ok = ~np.isnan(flux)
    return np.interp(grid, wl[ok], flux[ok]).astype(np.float32)


def quantile_like_torch(x: np.ndarray, q: float = QUANTILE, axis=-1) -> np.ndarray:
    """``torch.quantile(x, q, dim=axis, keepdim=True)`` in numpy (float32 ranks and lerp)."""
    x = np.asarray(x, dtype=np.float32)
    if axis is None:
        x, axis = x.reshape(1, -1), -1
    s = np.sort(x, axis=axis)  # NaNs sort last, as in torch
    n = s.shape[axis]
    rank = np.float32(q) * np.float32(n - 1)
    below = np.floor(rank)
    weight = np.float32(rank - below)
    lo = np.take(s, [int(below)], axis=axis)
    hi = np.take(s, [min(int(below) + 1, n - 1)], axis=axis)
    out = _lerp(lo, hi, weight)
    return np.where(np.isnan(x).any(axis=axis, keepdims=True), np.float32(np.nan), out)


def _lerp(lo, hi, weight):
    # torch.lerp's two-sided form, which is what torch.quantile uses
    if weight < 0.5:
        return (lo + weight * (hi - lo)).astype(np.float32)
    return (hi - (hi - lo) * np.float32(1.0 - weight)).astype(np.float32)


def log_scale(x: np.ndarray, pooled: bool = False) -> np.ndarray:
    """Step 4: ``min(log(max(x, 1e-6)), q95 + 1)`` (float32).

    Parameters
    ----------
    x : ndarray
        Interpolated spectra, pixels on the last axis.
    pooled : bool
        False (the rule here): one q95 per row. True: one q95 over all rows together,
        what the reference deployment did for the noise draws of a spectrum.
    """
    y = np.log(np.maximum(np.asarray(x, dtype=np.float32), np.float32(FLUX_FLOOR)))
    q = quantile_like_torch(y, axis=None if pooled else -1)
    if pooled:
        q = q.reshape(())
    return np.minimum(y, q + np.float32(1.0)).astype(np.float32)


def preprocess_one(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1–4 for one spectrum: (log-scaled noise-free input (3900,), clean flux, error)."""
    f = clean_flux(flux)
    err = error_from_ivar(ivar, f)
    return log_scale(interpolate(wavelength, f)), f, err


def noised_log_scaled(wavelength: np.ndarray, flux: np.ndarray, error: np.ndarray, z: np.ndarray,
                      pooled: bool = False) -> np.ndarray:
    """Monte Carlo inputs ``(D, 3900)``: ``flux + error·z`` on the native grid, interpolated, log-scaled.

    ``flux`` is the cleaned flux and ``z`` the ``(D, n_pixels)`` standard normals.
    """
    noised = np.asarray(flux, np.float32) + np.asarray(error, np.float32) * np.asarray(z, np.float32)
    return log_scale(interpolate(wavelength, noised), pooled=pooled)


# -- torch, batched --------------------------------------------------------------------

@dataclass
class PaddedSpectra:
    """B spectra padded to a common length N (torch tensors on one device).

    ``wavelength`` (float32, padding +inf), ``flux`` (float32 raw, padding 0), ``ivar``
    (float32, padding 0) and ``mask`` (True on real pixels) are all ``(B, N)``.
    """

    wavelength: torch.Tensor
    flux: torch.Tensor
    ivar: torch.Tensor
    mask: torch.Tensor

    @property
    def n_pixels(self) -> int:
        return self.flux.shape[1]


def pad_spectra(wavelengths: Sequence[np.ndarray], fluxes: Sequence[np.ndarray],
                ivars: Sequence[np.ndarray], device=None) -> PaddedSpectra:
    """Stack per-spectrum arrays into padded tensors on ``device`` (one transfer each)."""
    import torch

    b = len(fluxes)
    n = max((len(f) for f in fluxes), default=0)
    # On CUDA the arrays are filled in page-locked (pinned) memory, so that the copies below
    # run asynchronously, overlapping the host's next steps; elsewhere plain numpy arrays.
    pinned = torch.device(device or "cpu").type == "cuda"

    def empty(dtype, fill):
        if not pinned:
            return np.full((b, n), fill, dtype=dtype)
        array = torch.empty((b, n), dtype=getattr(torch, np.dtype(dtype).name), pin_memory=True).numpy()
        array.fill(fill)
        return array

    wl = empty(np.float32, np.inf)
    fl = empty(np.float32, 0)
    iv = empty(np.float32, 0)
    mask = empty(np.bool_, False)
    for i, (w, f, v) in enumerate(zip(wavelengths, fluxes, ivars)):
        k = len(f)
        wl[i, :k] = w
        fl[i, :k] = f
        iv[i, :k] = v
        mask[i, :k] = True

    def to(a):
        return torch.from_numpy(a).to(device, non_blocking=True)

    return PaddedSpectra(to(wl), to(fl), to(iv), to(mask))


def _row_median(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """numpy-style median (mean of the two middle values) of ``values[valid]`` per row; NaN if none."""
    import torch

    s, _ = torch.sort(torch.where(valid, values, torch.nan), dim=-1)  # NaNs last
    n = valid.sum(dim=-1, keepdim=True)
    lo = torch.gather(s, -1, ((n - 1).clamp(min=0)) // 2)
    hi = torch.gather(s, -1, (n // 2).clamp(max=s.shape[-1] - 1))
    med = (lo + hi) / 2
    return torch.where(n > 0, med, torch.nan)[..., 0]


def error_from_ivar_t(ivar: torch.Tensor, flux: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Batched :func:`error_from_ivar`: ``(B, N)`` float32; padding pixels are ignored."""
    import torch

    # torch's float32 sqrt is not always correctly rounded (numpy's is): go through float64
    err = torch.sqrt((1.0 / torch.nan_to_num(ivar)).double()).float()
    all_inf = (torch.isinf(err) | ~mask).all(dim=-1, keepdim=True)
    default = _row_median(flux, mask)[:, None] * DEFAULT_ERROR_FRACTION
    err = torch.where(all_inf, default.expand_as(err), err)
    cap = ERROR_CLIP * _row_median(err, torch.isfinite(err) & mask)[:, None]
    err = torch.minimum(err, cap)
    return torch.where(torch.isnan(err), cap, err)


def interpolate_t(xp: torch.Tensor, fp: torch.Tensor, valid: torch.Tensor,
                  grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise ``np.interp(grid, xp[valid], fp[valid])`` in float64, returned as float32.

    Parameters
    ----------
    xp : (R, N) or (B, N) tensor
        Increasing sample positions (float32). With B < R rows, row r uses xp[r // (R/B)].
    fp : (R, N) tensor
        Values; NaN or ``~valid`` points are ignored.
    valid : (R, N) bool tensor
    grid : (G,) tensor

    Returns
    -------
    out : (R, G) float32 tensor
    n_used : (R,) tensor
        Points used per row; a row with 0 has no result (numpy raises there).
    """
    import torch

    r, n = fp.shape
    per = r // xp.shape[0]  # rows sharing one row of xp (a spectrum's draws)
    valid = valid & ~torch.isnan(fp)
    n_used = valid.sum(dim=-1)
    front = torch.arange(n, device=fp.device) < n_used[:, None]
    counts = n_used.view(-1, per)
    if torch.equal(valid, front) and torch.equal(counts, counts[:, :1].expand_as(counts)):
        # The usual case: only padding is unusable, so every row's points are already in
        # order at its front, and all rows of a spectrum use the same points: find the
        # grid's intervals once per spectrum instead of once per draw.
        xs = xp.double().masked_fill_(~front.view(-1, per, n)[:, 0], torch.inf)
        fs = fp.double().view(-1, per, n)
        out = _interp_sorted(xs, fs, counts[:, 0], grid)
        return out.reshape(r, -1), n_used
    if per > 1:
        xp = xp.repeat_interleave(per, dim=0)
    # Move the usable points of each row to its front, in order; the tail becomes +inf.
    order = torch.argsort((~valid).to(torch.uint8), dim=-1, stable=True)
    xs = torch.gather(xp, -1, order).double().masked_fill_(~front, torch.inf)
    fs = torch.gather(fp, -1, order).double()
    return _interp_sorted(xs, fs[:, None, :], n_used, grid)[:, 0], n_used


def _interp_sorted(xs: torch.Tensor, fs: torch.Tensor, n_used: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``np.interp`` of P value rows on each row of positions, float64 in, float32 out.

    ``xs`` (S, N): increasing positions, its first ``n_used`` usable and the rest +inf;
    ``fs`` (S, P, N): values on those positions. Returns (S, P, G).
    """
    import torch

    s, p, n = fs.shape
    g = grid.double().expand(s, -1).contiguous()
    j = torch.searchsorted(xs, g, right=True) - 1  # xs[j] <= g < xs[j+1]
    last = (n_used - 1).clamp(min=0)[:, None]
    j0 = j.clamp(min=0, max=max(n - 2, 0))
    j1 = (j0 + 1).clamp(max=n - 1)
    x0, x1 = torch.gather(xs, -1, j0)[:, None], torch.gather(xs, -1, j1)[:, None]

    def per_row(index: torch.Tensor) -> torch.Tensor:
        return torch.gather(fs, -1, index[:, None, :].expand(s, p, index.shape[-1]))

    f0, f1 = per_row(j0), per_row(j1)
    g, j = g[:, None], j[:, None]
    slope = (f1 - f0) / (x1 - x0)
    out = slope * (g - x0) + f0
    # numpy's fallbacks: from the other end when NaN; flat segments; exact hits
    out = torch.where(torch.isnan(out), slope * (g - x1) + f1, out)
    out = torch.where(torch.isnan(out) & (f0 == f1), f0, out)
    out = torch.where(g == x0, f0, out)
    out = torch.where(j < 0, fs[..., :1], out)
    out = torch.where(j >= last[:, None], per_row(last), out)
    return out.float()


def quantile_t(y: torch.Tensor, q: float = QUANTILE) -> torch.Tensor:
    """``torch.quantile(y, q, dim=-1, keepdim=True)`` without its 16M-element limit."""
    import torch

    n = y.shape[-1]
    rank = torch.tensor(q, dtype=y.dtype) * (n - 1)
    below = int(torch.floor(rank))
    weight = float(rank - below)
    k = n - below  # the k largest values hold both order statistics
    top, _ = torch.topk(y, min(k, n), dim=-1, largest=True, sorted=True)
    lo = top[..., k - 1:k]
    hi = top[..., max(k - 2, 0):max(k - 1, 1)]
    out = torch.lerp(lo, hi, weight)
    return torch.where(torch.isnan(y).any(dim=-1, keepdim=True), torch.nan, out)


def log_scale_t(x: torch.Tensor) -> torch.Tensor:
    """Batched :func:`log_scale`, one q95 per row (last axis)."""
    import torch

    y = torch.log(torch.clamp(x, min=FLUX_FLOOR))
    return torch.minimum(y, quantile_t(y) + 1.0)


def build_inputs(batch: PaddedSpectra, z: torch.Tensor | None, grid: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The network input for B spectra and all their draws, in one go.

    Parameters
    ----------
    batch : PaddedSpectra
    z : (B, D, N) tensor or None
        Standard normals for the draws on the native (padded) grid; None → no draws.
    grid : (G,) tensor, optional
        Defaults to :data:`GRID` on the batch's device.

    Returns
    -------
    x : (B, 1 + D, G) float32 tensor
        Row 0 of each spectrum is noise-free, rows 1… are its draws.
    ok : (B,) bool tensor
        False where a row had no usable pixel (e.g. no finite error for the draws).
    error : (B, N) float32 tensor
    """
    import torch

    device = batch.flux.device
    if grid is None:
        grid = torch.from_numpy(GRID).to(device)
    flux = torch.nan_to_num(batch.flux, nan=0.0)
    flux = torch.where(batch.mask, flux, 0.0)
    err = error_from_ivar_t(batch.ivar, flux, batch.mask)
    b, n = flux.shape
    rows = flux[:, None, :]
    if z is not None and z.shape[1] > 0:
        # flux + err·z as two float32 ops (no fused multiply-add), as the reference did
        rows = torch.cat([rows, flux[:, None, :] + err[:, None, :] * z], dim=1)
    d1 = rows.shape[1]
    valid = batch.mask[:, None, :].expand(b, d1, n).reshape(b * d1, n)
    interp, n_used = interpolate_t(batch.wavelength, rows.reshape(b * d1, n), valid, grid)
    x = log_scale_t(interp).reshape(b, d1, -1)
    ok = (n_used.reshape(b, d1) > 0).all(dim=1)
    return x, ok, err
