"""BossNet preprocessing: numpy reference and batched torch against the shared vectors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workers.bossnet import preprocess as P

DATA = Path(__file__).parent / "data"
CASES = ["clean", "gaps", "negative_flux", "partial_coverage", "all_ivar_zero"]
RTOL = 1e-5


@pytest.fixture(scope="module")
def vectors():
    with np.load(DATA / "bossnet_preprocess.npz") as npz:
        return {k: npz[k] for k in npz.files}


def wavelength(vectors, case):
    return 10.0 ** vectors[f"{case}/loglam"]


def assert_close(actual, expected, rtol=RTOL):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    # relative to the value, with a floor so values at zero compare absolutely
    err = np.abs(actual - expected) / np.maximum(np.abs(expected), 1.0)
    assert np.all(np.isfinite(actual) == np.isfinite(expected))
    assert np.nanmax(err) <= rtol, f"max relative error {np.nanmax(err):.3g}"


def test_grid_is_the_references_float32_linspace():
    g = P.GRID
    assert g.dtype == np.float32 and g.shape == (3900,)
    assert g[0] == 3800.0 and g[-1] == 8900.0 and np.all(np.diff(g) > 0)
    # np.linspace rounds differently in a few hundred places: the reference used torch's
    assert 0 < np.sum(g != np.linspace(3800, 8900, 3900).astype(np.float32)) < 1000


@pytest.mark.parametrize("case", CASES)
def test_numpy_reference_matches_vectors(vectors, case):
    wl = wavelength(vectors, case)
    log_scaled, flux, err = P.preprocess_one(wl, vectors[f"{case}/flux"], vectors[f"{case}/ivar"])
    assert err.dtype == np.float32 and log_scaled.dtype == np.float32
    assert_close(err, vectors[f"{case}/error"])
    assert_close(P.interpolate(wl, flux), vectors[f"{case}/interpolated"])
    assert_close(log_scaled, vectors[f"{case}/log_scaled"])
    draws = P.noised_log_scaled(wl, flux, err, vectors[f"{case}/noise_z"])
    assert_close(draws, vectors[f"{case}/draws_log_scaled_per_draw"])


def test_torch_batch_matches_vectors_with_padding(vectors):
    """All five cases (two lengths) in one padded batch, all eight draws each, in one call."""
    wls = [wavelength(vectors, c).astype(np.float32) for c in CASES]
    batch = P.pad_spectra(wls, [vectors[f"{c}/flux"] for c in CASES], [vectors[f"{c}/ivar"] for c in CASES])
    n = batch.n_pixels
    z = torch.zeros(len(CASES), 8, n)
    for i, c in enumerate(CASES):
        zc = vectors[f"{c}/noise_z"]
        z[i, :, : zc.shape[1]] = torch.from_numpy(zc)
    x, ok, err = P.build_inputs(batch, z)
    assert x.shape == (len(CASES), 9, 3900) and x.dtype == torch.float32
    assert ok.all()
    for i, c in enumerate(CASES):
        k = len(vectors[f"{c}/flux"])
        assert_close(err[i, :k].numpy(), vectors[f"{c}/error"])
        assert_close(x[i, 0].numpy(), vectors[f"{c}/log_scaled"])
        assert_close(x[i, 1:].numpy(), vectors[f"{c}/draws_log_scaled_per_draw"])


def test_pooled_q95_is_the_reference_deployments_quirk_and_differs(vectors):
    differs = []
    for case in CASES:
        wl = wavelength(vectors, case)
        _, flux, err = P.preprocess_one(wl, vectors[f"{case}/flux"], vectors[f"{case}/ivar"])
        pooled = P.noised_log_scaled(wl, flux, err, vectors[f"{case}/noise_z"], pooled=True)
        assert_close(pooled, vectors[f"{case}/draws_log_scaled_pooled"])
        per_draw = vectors[f"{case}/draws_log_scaled_per_draw"]
        gap = np.max(np.abs(pooled - per_draw) / np.maximum(np.abs(per_draw), 1.0))
        differs.append(gap > 10 * RTOL)
    # the q95 clip only bites where a spectrum has outliers above q95 + 1 (the gaps case)
    assert differs[CASES.index("gaps")]


def test_error_rules():
    flux = np.array([1, 2, 3, 4, 5, 6], np.float32)
    ivar = np.array([1, 0, np.nan, -1, 0.25, 1e-6], np.float32)
    err = P.error_from_ivar(ivar, flux)
    m = np.median([1.0, 2.0, 1000.0])  # finite errors: 1, 2, 1000
    assert err[0] == 1 and err[4] == 2
    assert err[1] == err[2] == err[3] == np.float32(5 * m)  # inf (0, NaN) clipped; NaN (<0) → 5m
    assert err[5] == np.float32(5 * m)  # 1000 clipped at 5m
    # every error infinite → 0.1 × median(flux)
    err = P.error_from_ivar(np.zeros(6, np.float32), flux)
    assert np.all(err == np.float32(0.35))
    # no finite error at all (negative ivar): NaN everywhere, as in the reference
    assert np.isnan(P.error_from_ivar(-np.ones(6, np.float32), flux)).all()


def test_torch_error_matches_numpy_on_edge_cases():
    rng = np.random.default_rng(3)
    rows = []
    for kind in range(6):
        n = 50 + 7 * kind
        flux = rng.normal(10, 3, n).astype(np.float32)
        ivar = rng.uniform(0.1, 2, n).astype(np.float32)
        if kind == 1:
            ivar[::3] = 0
            ivar[1::5] = np.nan
            ivar[2::7] = -1
        if kind == 2:
            ivar[:] = 0
        if kind == 3:
            ivar[:] = -1
        if kind == 4:
            flux[::4] = np.nan
            ivar[:] = np.nan
        if kind == 5:
            ivar[:] = 0
            flux[:] = -2  # negative median: the cap 5·m lies below m, kept as the reference does
        rows.append((flux, ivar))
    fluxes = [P.clean_flux(f) for f, _ in rows]
    batch = P.pad_spectra([np.arange(len(f), dtype=np.float32) for f in fluxes], fluxes, [v for _, v in rows])
    got = P.error_from_ivar_t(batch.ivar, torch.nan_to_num(batch.flux, nan=0.0), batch.mask)
    for i, (f, (_, v)) in enumerate(zip(fluxes, rows)):
        want = P.error_from_ivar(v, f)
        np.testing.assert_array_equal(got[i, : len(f)].numpy(), want)


def test_row_median_and_quantile_follow_numpy_and_torch():
    rng = np.random.default_rng(0)
    values = torch.from_numpy(rng.normal(size=(4, 9)).astype(np.float32))
    valid = torch.ones(4, 9, dtype=torch.bool)
    valid[1, 4:] = False  # even count
    valid[2, 5:] = False  # odd count
    valid[3] = False  # none → NaN
    med = P._row_median(values, valid).numpy()
    assert med[0] == np.median(values[0].numpy())
    assert med[1] == np.median(values[1, :4].numpy())
    assert med[2] == np.median(values[2, :5].numpy())
    assert np.isnan(med[3])
    y = torch.from_numpy(rng.normal(size=(5, 3900)).astype(np.float32))
    y[4, 17] = torch.nan
    torch.testing.assert_close(P.quantile_t(y), torch.quantile(y, 0.95, dim=-1, keepdim=True),
                               rtol=0, atol=0, equal_nan=True)
    np.testing.assert_allclose(P.quantile_like_torch(y.numpy()), P.quantile_t(y).numpy(), rtol=1e-6)


def test_interpolation_is_numpy_interp_ignoring_nan():
    rng = np.random.default_rng(1)
    n = 40
    xp = np.sort(rng.uniform(3, 17, n)).astype(np.float32)
    grid = np.concatenate([np.linspace(0, 20, 97), xp[[0, 5, 11, -1]]]).astype(np.float32)  # clamps, exact hits
    fps = rng.normal(size=(4, n)).astype(np.float32)
    fps[1, [0, 3, 4, 20, -1]] = np.nan  # NaNs at both ends and inside
    fps[2, :-1] = np.nan  # one usable point
    fps[3, :] = np.nan  # none: no result
    valid = torch.ones(4, n, dtype=torch.bool)
    out, n_used = P.interpolate_t(torch.from_numpy(xp)[None], torch.from_numpy(fps), valid, torch.from_numpy(grid))
    assert n_used.tolist() == [n, n - 5, 1, 0]
    for r in range(3):
        ok = ~np.isnan(fps[r])
        want = np.interp(grid, xp[ok], fps[r, ok]).astype(np.float32)
        np.testing.assert_array_equal(out[r].numpy(), want)


def test_interpolation_of_padded_draws_locates_once_per_spectrum_and_still_matches_numpy():
    # Padding only: the shared-interval path (one search per spectrum, not per draw).
    rng = np.random.default_rng(3)
    lengths, draws = (40, 25, 1), 4
    xps = [np.sort(rng.uniform(3, 17, k)).astype(np.float32) for k in lengths]
    grid = np.concatenate([np.linspace(0, 20, 97), xps[0][[0, 5, -1]], xps[1][[2, -1]]]).astype(np.float32)
    xp = np.full((len(lengths), max(lengths)), np.inf, np.float32)
    fp = np.zeros((len(lengths) * draws, max(lengths)), np.float32)
    valid = np.zeros_like(fp, dtype=bool)
    for i, (k, x) in enumerate(zip(lengths, xps)):
        xp[i, :k] = x
        fp[i * draws:(i + 1) * draws, :k] = rng.normal(size=(draws, k))
        fp[i * draws + 1, k // 2] = fp[i * draws + 1, max(k // 2 - 1, 0)]  # a flat segment
        valid[i * draws:(i + 1) * draws, :k] = True
    out, n_used = P.interpolate_t(torch.from_numpy(xp), torch.from_numpy(fp), torch.from_numpy(valid),
                                  torch.from_numpy(grid))
    assert n_used.tolist() == [k for k in lengths for _ in range(draws)]
    for row in range(len(fp)):
        k = lengths[row // draws]
        want = np.interp(grid, xps[row // draws], fp[row, :k]).astype(np.float32)
        np.testing.assert_array_equal(out[row].numpy(), want)


def test_build_inputs_marks_spectrum_without_finite_error():
    rng = np.random.default_rng(2)
    wl = np.linspace(3700, 9000, 300).astype(np.float32)
    flux = rng.uniform(1, 2, 300).astype(np.float32)
    good = np.ones(300, np.float32)
    bad = -np.ones(300, np.float32)  # negative ivar everywhere: the error is NaN
    batch = P.pad_spectra([wl, wl[:200]], [flux, flux[:200]], [bad, good[:200]])
    z = torch.from_numpy(rng.normal(size=(2, 3, 300)).astype(np.float32))
    x, ok, _ = P.build_inputs(batch, z)
    assert ok.tolist() == [False, True]
    assert torch.isfinite(x[1]).all()
    # the noise-free row needs no error and matches the numpy reference
    want, _, _ = P.preprocess_one(wl, flux, bad)
    assert_close(x[0, 0].numpy(), want)
