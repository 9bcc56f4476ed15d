"""AstroNN distances pipeline: continuum, result vectors, per-star photometry, failures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from workers.astronn_dist.continuum import normalize_batch
from workers.astronn_dist.pipeline import (
    AstroNNDistPipeline,
    normalize,
    normalize_spectra,
    summarize_passes,
)
from workers.astronn_dist.photometry import SourceCatalog, fakemag_distance
from workers.astronn_dist.schema import ASTRONN_DIST_SCHEMA
from workers.spectrum import Spectrum

DATA = Path(__file__).parent / "data"
CONTINUUM = np.load(DATA / "astronn_continuum.npz")
CASES = json.loads((DATA / "astronn_dist_outputs.json").read_text())
NO_RESULT = 1 << 11


def make_spectrum(i: int, ref=None, k_header=None, visit=False, noise=0.01, **ids) -> Spectrum:
    rng = np.random.default_rng(i)
    flux = CONTINUUM["flux"] * (1 + noise * rng.standard_normal(CONTINUUM["flux"].size))
    meta = {} if k_header is None else {"k_mag": k_header}
    if ref is not None:
        meta["ref_photometry"] = ref
    return Spectrum(path=f"apStar-{i}.fits", hdu=1, row=0, instrument="apogee",
                    wavelength=10 ** (4.179 + 6e-6 * np.arange(8575)),
                    flux=flux.astype(np.float32), error=CONTINUUM["err"].astype(np.float32),
                    bitmask=CONTINUUM["bitmask"], is_visit=visit, ids={"sdss_id": i, **ids}, meta=meta)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    weights = AstroNNDistPipeline.spec.demo_weights_path(tmp_path_factory.mktemp("weights"))
    return AstroNNDistPipeline(weights=weights, device="cpu", draws=40, seed=5)


# -- preprocessing ---------------------------------------------------------------------

def test_continuum_matches_astronn_vector():
    norm, norm_err = normalize(CONTINUUM["flux"], CONTINUUM["err"], CONTINUUM["bitmask"])
    assert norm.shape == norm_err.shape == (1, 7514)
    np.testing.assert_allclose(norm[0], CONTINUUM["norm_flux"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(norm_err[0], CONTINUUM["norm_err"], rtol=1e-12, atol=1e-12)


def test_continuum_batched_equals_one_by_one():
    spectra = [make_spectrum(i) for i in range(3)]
    batch, ok, failed = normalize_spectra(spectra)
    assert ok == [0, 1, 2] and failed == {}
    for k, s in enumerate(spectra):
        single, _ = normalize(np.asarray(s.flux, float), np.asarray(s.error, float), s.bitmask)
        np.testing.assert_array_equal(batch[k], single[0])


def test_batched_continuum_is_the_library_call_exactly():
    """normalize_batch equals astroNN's apogee_continuum bit for bit on this machine (and the
    stored vector within a few ulps): the vector, noisy copies,
    negative flux, zero errors, bad-pixel bits, and a spectrum whose fit raises."""
    rng = np.random.default_rng(0)
    n = 6
    flux = CONTINUUM["flux"][None] * (1 + 0.05 * rng.standard_normal((n, 8575)))
    err = np.abs(CONTINUUM["err"][None] * (1 + 0.3 * rng.standard_normal((n, 8575))))
    bits = np.where(rng.random((n, 8575)) < 0.02, 1 << rng.integers(0, 14, (n, 8575)), 0)
    flux[0] = CONTINUUM["flux"]
    err[0] = CONTINUUM["err"]
    bits[0] = CONTINUUM["bitmask"]
    flux[1, 100:200] = -5.0
    err[2, 5000:5010] = 0.0
    flux[3, 300] = np.nan
    mine, failed = normalize_batch(flux, err, bits)
    assert failed == {}
    ref, _ = normalize(flux, err, bits)
    np.testing.assert_array_equal(mine, ref)  # both computed here: equal to the bit
    # The stored vector was computed on another CPU: its least-squares fit goes through BLAS,
    # whose summation order (AVX2 vs AVX-512 kernels) moves the last bit. A few ulps, no more.
    np.testing.assert_allclose(mine[0], CONTINUUM["norm_flux"], rtol=8 * np.finfo(float).eps, atol=0)
    err[4] = np.nan  # the library raises on this one (its SVD does not converge)
    with pytest.raises(np.linalg.LinAlgError):
        normalize(flux[4], err[4], bits[4])
    mine, failed = normalize_batch(flux, err, bits)
    assert list(failed) == [4] and "continuum fit failed" in failed[4]
    np.testing.assert_array_equal(np.delete(mine, 4, axis=0), np.delete(ref, 4, axis=0))


def test_continuum_from_ivar_when_no_error():
    s = make_spectrum(0, noise=0)
    s.ivar, s.error = np.asarray(CONTINUUM["err"], float) ** -2, None
    norm, ok, _ = normalize_spectra([s])
    np.testing.assert_allclose(norm[0], CONTINUUM["norm_flux"], rtol=1e-5, atol=1e-6)


# -- from passes to results (the published vectors) ------------------------------------

# The published vectors name the outputs as the pipeline's specification does; the rows
# use the SDSS data model's names.
VECTOR_NAMES = {"A_k_mag": "a_k_mag", "e_L_fakemag": "L_fakemag_err", "dist": "nn_dist", "e_dist": "nn_dist_err"}


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_outputs_vectors(case):
    inp, expected = case["input"], case["expected"]
    out = summarize_passes([inp["mc_outputs"]], [inp["mc_log_variances"]], inp["labels_std"],
                           [inp["k_mag"]], [inp["ebv"]])
    for name, value in expected.items():
        got = out[VECTOR_NAMES.get(name, name)][0]
        if isinstance(value, bool) or name == "result_flags":
            assert got == value, name
        else:
            assert got == pytest.approx(value, rel=1e-6, abs=1e-12), name


def test_summarize_vectorized_equals_one_by_one():
    """All vector cases in one call (each its own k_mag/ebv) give the per-case results."""
    pred = [c["input"]["mc_outputs"] for c in CASES]
    logvar = [c["input"]["mc_log_variances"] for c in CASES]
    out = summarize_passes(pred, logvar, 300.0, [c["input"]["k_mag"] for c in CASES],
                           [c["input"]["ebv"] for c in CASES])
    for i, c in enumerate(CASES):
        assert out["nn_dist"][i] == pytest.approx(c["expected"]["dist"], rel=1e-6)
        assert out["result_flags"][i] == c["expected"]["result_flags"]


def test_impossible_values_become_nan():
    pred = np.full((3, 5), 0.5)
    pred[1] = 0.0  # fakemag 0 → astroNN magic number
    pred[2] = 1e-12  # absurdly faint → distance > 1e10 pc
    out = summarize_passes(pred, np.full((3, 5), -6.0), 300.0, [10.0, 10.0, 10.0], [0.1, 0.1, 0.1])
    assert np.isfinite(out["nn_dist"][0]) and np.isfinite(out["nn_parallax"][0])
    for i in (1, 2):
        assert np.isnan(out["nn_dist"][i]) and np.isnan(out["nn_dist_err"][i]) and np.isnan(out["nn_parallax"][i])
    assert out["result_flags"][1] & 1  # e_L/L = inf → unreliable


def test_distance_arithmetic_is_astronn_gaia_bit_for_bit():
    """fakemag_distance gives astroNN.gaia's fakemag_to_pc and fakemag_to_parallax exactly, NaN for its magic number."""
    import astroNN.config
    import astroNN.gaia

    rng = np.random.default_rng(5)
    fakemag = np.concatenate([rng.uniform(1e-3, 400.0, 200), [0.0, -3.0, np.nan, 50.0, 50.0, 1e-12, np.inf]])
    mag = np.concatenate([rng.uniform(-0.9, 40.0, 200), [9.0, 9.0, 9.0, np.nan, 60.0, 9.0, 9.0]])
    fakemag_err = np.concatenate([rng.uniform(0.0, 80.0, 200), [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    dist, dist_err, parallax, parallax_err = fakemag_distance(fakemag, mag, fakemag_err)
    ref_dist, ref_dist_err = (q.value for q in astroNN.gaia.fakemag_to_pc(fakemag, mag, fakemag_err))
    ref_plx, ref_plx_err = (q.value for q in astroNN.gaia.fakemag_to_parallax(fakemag, mag, fakemag_err))
    magic = float(astroNN.config.MAGIC_NUMBER)
    for got, ref in ((dist, ref_dist), (dist_err, ref_dist_err), (parallax, ref_plx), (parallax_err, ref_plx_err)):
        np.testing.assert_array_equal(got, np.where(ref == magic, np.nan, ref))
    assert np.isnan(dist[200:203]).all() and np.isnan(dist[203]) and np.isfinite(dist[204:206]).all()


def test_weighted_parallax():
    rng = np.random.default_rng(1)
    pred = 0.16 + 0.005 * rng.standard_normal((2, 50))
    logvar = np.full((2, 50), -9.0)
    plx, e_plx = [0.9, np.nan], [0.05, np.nan]
    out = summarize_passes(pred, logvar, 300.0, [10.0, 10.0], [0.1, 0.1], plx=plx, e_plx=e_plx)
    nn, nn_model = out["nn_parallax"][0], out["nn_parallax_model_err"][0]
    assert nn == pytest.approx(1000.0 / out["nn_dist"][0], rel=1e-12)
    assert out["nn_parallax_err"][0] == pytest.approx(nn * out["L_fakemag_err"][0] / out["L_fakemag"][0])
    assert nn_model == pytest.approx(nn * pred[0].std(ddof=1) / pred[0].mean())
    gaia = 0.9 + 0.03464
    assert out["gdr3_parallax_w_zp"][0] == pytest.approx(gaia)
    w1, w2 = nn_model**-2, 0.05**-2
    assert out["weighted_parallax"][0] == pytest.approx((nn * w1 + gaia * w2) / (w1 + w2))
    assert out["weighted_parallax_err"][0] == pytest.approx((w1 + w2) ** -0.5)
    assert out["weighted_dist"][0] == pytest.approx(1000.0 / out["weighted_parallax"][0])
    assert out["weighted_dist_err"][0] == pytest.approx(
        out["weighted_dist"][0] * out["weighted_parallax_err"][0] / out["weighted_parallax"][0])
    # no Gaia parallax: NN parallax still given, weighted values NaN (as in the SDSS product)
    assert np.isfinite(out["nn_parallax"][1])
    for name in ("gdr3_parallax_w_zp", "weighted_parallax", "weighted_parallax_err", "weighted_dist"):
        assert np.isnan(out[name][1]), name


# -- the pipeline ----------------------------------------------------------------------

def test_pipeline_attributes(pipeline):
    assert pipeline.name == "astronn_dist" and pipeline.instrument == "apogee"
    assert AstroNNDistPipeline.default_draws == 100 and pipeline.defaults.draws == 40
    assert pipeline.exception_flag == "flag_no_result" and pipeline.schema is ASTRONN_DIST_SCHEMA
    assert pipeline.demo and len(pipeline.model_sha256) == 64
    assert pipeline.catalog is None
    assert pipeline.batch_size == 32  # CPU default, also the engine's batch size


def test_each_star_uses_its_own_photometry(pipeline):
    """One batch, different magnitudes and reddenings: every distance from its own star's values."""
    phot = [(8.0, 0.05), (10.5, 0.6), (12.9, 0.01), (7.2, 1.3)]
    spectra = [make_spectrum(i, ref={"k_mag": k, "ebv": e}) for i, (k, e) in enumerate(phot)]
    rows = pipeline.predict(spectra)
    import astroNN.gaia as gaia  # the reference (it loads TensorFlow; the pipeline does not)

    for (k, e), row in zip(phot, rows):
        assert (row["k_mag"], row["ebv"]) == (k, e)
        assert row["a_k_mag"] == pytest.approx(0.3517 * e)
        dist, e_dist = gaia.fakemag_to_pc(row["L_fakemag"], k - 0.3517 * e, row["L_fakemag_err"])
        assert row["nn_dist"] == pytest.approx(dist.value, rel=1e-9)
        assert row["nn_dist_err"] == pytest.approx(e_dist.value, rel=1e-9)
        assert row["result_flags"] == 0 and not row["flag_bad"] and not row["flag_warn"]
        assert set(row) == {f.name for f in ASTRONN_DIST_SCHEMA.all_fields} | {"result_flags", "flag_warn",
                                                                                "flag_bad"}
    # the similar spectra have similar fakemag, so distances follow the magnitudes
    assert len({round(r["nn_dist"]) for r in rows}) == 4
    assert rows[2]["nn_dist"] > rows[1]["nn_dist"] > rows[0]["nn_dist"]


def test_missing_photometry_and_extinction_flags(pipeline):
    spectra = [make_spectrum(0, ref={"k_mag": 9.0, "ebv": 0.1}),
               make_spectrum(1, ref={"ebv": 0.1}),  # no k_mag anywhere
               make_spectrum(2, ref={"k_mag": 9.0, "ebv": -0.2}),  # ebv ≤ 0
               make_spectrum(3, k_header=99.0),  # header sentinel and no ebv
               make_spectrum(4, k_header=10.0)]  # header k_mag, no ebv
    rows = pipeline.predict(spectra)
    assert [r["result_flags"] for r in rows] == [0, 2, 4, 2 | 4, 4]
    assert [r["flag_warn"] for r in rows] == [False, False, True, True, True]
    assert [r["flag_bad"] for r in rows] == [False, True, False, True, False]
    assert rows[1]["k_mag"] == 0.0 and rows[2]["ebv"] == 0.0 and rows[2]["a_k_mag"] == 0.0
    assert rows[4]["k_mag"] == 10.0 and rows[4]["ebv"] == 0.0


def test_catalog_photometry_and_parallax(tmp_path, pipeline, monkeypatch):
    path = tmp_path / "cat.csv"
    path.write_text("SDSS_ID,K_MAG,EBV,PLX,E_PLX\n0,9.5,0.2,1.0,0.03\n1,11.0,0.1,,\n")
    monkeypatch.setattr(pipeline, "catalog", SourceCatalog.from_file(path))
    rows = pipeline.predict([make_spectrum(0), make_spectrum(1, ref={"k_mag": 9.0})])
    assert (rows[0]["k_mag"], rows[0]["ebv"]) == (9.5, 0.2)
    assert rows[0]["gdr3_parallax_w_zp"] == pytest.approx(1.03464)
    assert np.isfinite(rows[0]["weighted_dist"])
    assert (rows[1]["k_mag"], rows[1]["ebv"]) == (9.0, 0.1)  # the reference wins for k_mag
    assert np.isnan(rows[1]["weighted_parallax"])


def test_unnormalizable_spectrum_gets_no_result_row(pipeline):
    short = make_spectrum(1, ref={"k_mag": 9.0, "ebv": 0.1})
    short.flux = short.flux[:1000]
    dark = make_spectrum(2, ref={"k_mag": 9.0, "ebv": 0.1})
    dark.flux = np.zeros(8575, np.float32)
    no_error = make_spectrum(3, ref={"k_mag": 9.0, "ebv": 0.1})
    no_error.error = None
    bad_error = make_spectrum(4, ref={"k_mag": 9.0, "ebv": 0.1})
    bad_error.error = np.full(8575, np.nan, np.float32)  # continuum fit cannot converge
    good = make_spectrum(0, ref={"k_mag": 9.0, "ebv": 0.1})
    rows = pipeline.predict([good, short, dark, no_error, bad_error])
    assert rows[0]["result_flags"] == 0 and np.isfinite(rows[0]["nn_dist"])
    for row in rows[1:]:
        assert row["result_flags"] == NO_RESULT and row["flag_bad"] and not row["flag_warn"]
        assert np.isnan(row["nn_dist"]) and np.isnan(row["L_fakemag"])
        assert row["error"].startswith("cannot normalize")
    assert "8575" in rows[1]["error"] and "flux" in rows[2]["error"] and "error" in rows[3]["error"]


def test_results_do_not_depend_on_batch(pipeline):
    spectra = [make_spectrum(i, ref={"k_mag": 9.0 + i, "ebv": 0.1}) for i in range(3)]
    together = pipeline.predict(spectra)
    alone = pipeline.predict(spectra[2:])
    assert alone[0]["L_fakemag"] == pytest.approx(together[2]["L_fakemag"], rel=1e-6)
    assert alone[0]["L_fakemag_err"] == pytest.approx(together[2]["L_fakemag_err"], rel=1e-6)
    again = pipeline.predict(spectra)  # same seed, same answer
    assert [r["L_fakemag"] for r in again] == [r["L_fakemag"] for r in together]
    assert [r["nn_dist_err"] for r in again] == [r["nn_dist_err"] for r in together]


def test_visit_and_boss_refused(pipeline):
    assert pipeline.refuse_reason(make_spectrum(0)) is None
    reason = pipeline.refuse_reason(make_spectrum(0, visit=True))
    assert reason and "visit" in reason and "coadded" in reason
    boss = make_spectrum(0)
    boss.instrument = "boss"
    assert "APOGEE" in pipeline.refuse_reason(boss)


def test_baseline_agrees_with_pipeline(pipeline):
    from workers.astronn_dist.baseline import baseline_predict

    spectra = [make_spectrum(i, ref={"k_mag": 9.0 + i, "ebv": 0.1}) for i in range(2)]
    spectra.append(make_spectrum(9))
    spectra[-1].flux = spectra[-1].flux[:10]
    base = baseline_predict(pipeline.model, spectra, passes=40, seed=1)
    ours = pipeline.predict(spectra)
    for b, o in zip(base[:2], ours[:2]):
        assert b["L_fakemag"] == pytest.approx(o["L_fakemag"], rel=0.02)
        assert b["L_fakemag_err"] == pytest.approx(o["L_fakemag_err"], rel=0.1)
        assert b["nn_dist"] == pytest.approx(o["nn_dist"], rel=0.02)
    assert base[2]["result_flags"] == NO_RESULT and ours[2]["result_flags"] == NO_RESULT
    assert not pipeline.model.training
