"""BossNet pipeline: output conversion and flags, batching, reproducibility, failed spectra."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.bossnet.baseline import baseline_predict
from workers.bossnet.network import BossNet
from workers.bossnet.pipeline import OUTPUT_MEAN, OUTPUT_STD, BossNetPipeline, convert_outputs
from workers.bossnet.preprocess import preprocess_one
from workers.bossnet.schema import BOSSNET_SCHEMA
from specq.testing.formula_weights import formula_state_dict
from conftest import bossnet_vector_spectra
from workers.spectrum import Spectrum
from workers.weights.formats import save_chunks

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]
CASES = ["clean", "gaps", "negative_flux", "partial_coverage", "all_ivar_zero"]
FIELDS = ["teff", "e_teff", "logg", "e_logg", "fe_h", "e_fe_h", "bn_v_r", "e_bn_v_r"]
DRAWS = 8  # enough for the checks; the default (20) is exercised by the benchmark


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Formula weights as a ten-chunk folder: outputs that react to every input detail."""
    with torch.device("meta"):
        model = BossNet()
    return save_chunks(formula_state_dict(model), tmp_path_factory.mktemp("bossnet-formula"))


@pytest.fixture(scope="module")
def pipe(weights):
    return BossNetPipeline(weights=weights, device="cpu", draws=DRAWS, seed=7)


@pytest.fixture(scope="module")
def spectra():
    out = bossnet_vector_spectra(CASES)
    clean = out[0]
    out.append(Spectrum(path="boss/clean.fits", hdu=1, row=1, instrument="boss", wavelength=clean.wavelength,
                        flux=clean.flux * np.float32(0.7), ivar=clean.ivar))
    return out


def normalized_row(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """A result row back in network units: (values, uncertainties), order [log g, log Teff, [Fe/H], v_r]."""
    values = np.array([row["logg"], math.log10(row["teff"]), row["fe_h"], row["bn_v_r"]])
    errors = np.array([row["e_logg"], row["e_teff"] / (row["teff"] * math.log(10)), row["e_fe_h"], row["e_bn_v_r"]])
    return (values - OUTPUT_MEAN) / OUTPUT_STD, errors / OUTPUT_STD


def close(a: dict, b: dict, tol: float) -> bool:
    """Equal to float32 rounding of the network: |Δ| ≤ tol·max(1, |output|) in network units.

    Float32 results depend slightly on the batch size (BLAS blocking); the spec puts
    these batch effects at ~5e-5 of the normalized outputs.
    """
    va, ea = normalized_row(a)
    vb, eb = normalized_row(b)
    scale = tol * np.maximum(1.0, np.abs(va))
    return bool(np.all(np.abs(va - vb) <= scale) and np.all(np.abs(ea - eb) <= scale)
                and a["result_flags"] == b["result_flags"])


# -- output conversion and flags -----------------------------------------------------------

def test_convert_outputs_matches_vectors():
    cases = json.loads((DATA / "bossnet_outputs.json").read_text())
    nominal = np.array([c["normalized_nominal"] for c in cases])
    draws = np.array([c["normalized_draws"] for c in cases])
    cols = convert_outputs(nominal, draws)
    for i, case in enumerate(cases):
        expected = case["expected"]
        for name in FIELDS:
            assert cols[name][i] == pytest.approx(expected[name], rel=1e-4), (i, name)
        assert int(cols["result_flags"][i]) == expected["result_flags"]
        assert bool(cols["flag_warn"][i]) is expected["flag_warn"]
        assert bool(cols["flag_bad"][i]) is expected["flag_bad"]


def normalized(teff, logg, fe_h, v_r=0.0):
    values = np.array([logg, np.log10(teff), fe_h, v_r], dtype=np.float64)
    return (values - OUTPUT_MEAN) / OUTPUT_STD


@pytest.mark.parametrize("teff, logg, fe_h, bits", [
    (5800, 4.4, 0.0, []),
    (1500, 2.0, 0.0, ["flag_unreliable_teff", "flag_unreliable_fe_h"]),
    (150000, 4.0, 0.0, ["flag_unreliable_teff"]),
    (6000, -1.5, 0.0, ["flag_unreliable_logg"]),
    (6000, 11.0, 0.0, ["flag_unreliable_logg", "flag_unreliable_fe_h"]),
    (6000, 5.5, 0.0, ["flag_unreliable_fe_h"]),
    (6000, 4.0, -4.5, ["flag_unreliable_fe_h"]),
    (6000, 4.0, 2.5, ["flag_unreliable_fe_h"]),
    (3500, 4.5, 0.0, ["flag_suspicious_fe_h"]),
    (3000, 4.5, 0.0, ["flag_unreliable_fe_h", "flag_suspicious_fe_h"]),
    (3800, 2.9, 0.0, []),
    (float("nan"), float("nan"), float("nan"), ["flag_runtime_exception"]),
])
def test_crafted_outputs_hit_every_flag(teff, logg, fe_h, bits):
    nominal = normalized(teff, logg, fe_h)[None]
    draws = nominal[:, None, :] + np.linspace(-0.01, 0.01, 5)[None, :, None]
    cols = convert_outputs(nominal, draws)
    flags = int(cols["result_flags"][0])
    assert BOSSNET_SCHEMA.decode(flags) == bits
    assert bool(cols["flag_warn"][0]) == any(b in ("flag_unreliable_fe_h", "flag_suspicious_fe_h") for b in bits)
    assert bool(cols["flag_bad"][0]) == any(b != "flag_suspicious_fe_h" for b in bits)
    if math.isfinite(teff):
        assert cols["teff"][0] == pytest.approx(teff, rel=1e-5)
        assert cols["e_teff"][0] > 0


def test_schema_declares_fields_flags_and_imports_no_torch():
    assert BOSSNET_SCHEMA.pipeline == "bossnet"
    assert [f.name for f in BOSSNET_SCHEMA.fields] == FIELDS
    # Spelled as the SDSS data model does (tests/test_export.py checks every column against it).
    assert [f.unit for f in BOSSNET_SCHEMA.fields] == ["K", "K", "log10(cm/s^2)", "log10(cm/s^2)", "dex", "dex",
                                                      "km/s", "km/s"]
    assert [(f.name, f.bit) for f in BOSSNET_SCHEMA.flags] == [
        ("flag_runtime_exception", 0), ("flag_unreliable_teff", 1), ("flag_unreliable_logg", 2),
        ("flag_unreliable_fe_h", 3), ("flag_suspicious_fe_h", 4)]
    assert BOSSNET_SCHEMA.warn_mask == 0b11000 and BOSSNET_SCHEMA.bad_mask == 0b01111
    code = "import sys, workers.bossnet, workers.bossnet.schema; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# -- the pipeline ---------------------------------------------------------------------------

def test_pipeline_attributes(pipe):
    assert (pipe.name, pipe.instrument, pipe.default_draws) == ("bossnet", "boss", 20)
    assert pipe.exception_flag == "flag_runtime_exception" and pipe.schema is BOSSNET_SCHEMA
    assert len(pipe.model_sha256) == 64 and pipe.demo is False and pipe.unexpected_keys == []
    assert pipe.device.type == "cpu" and pipe.conv_impl == "fft"


def test_batches_do_not_change_results(pipe, spectra):
    """Same seed → same numbers, whatever the batch size, order or company of a spectrum."""
    pipe.batch_size = 4
    together = pipe.predict(spectra)
    pipe.batch_size = 1
    alone = [pipe.predict([s])[0] for s in spectra[::-1]][::-1]
    pipe.batch_size = 4
    for a, b in zip(together, alone):
        assert close(a, b, 5e-5), (a, b)
    assert all(r["result_flags"] & 1 == 0 and math.isfinite(r["e_teff"]) for r in together)
    # different spectra (and the same flux in another row of the file) get different noise
    assert together[0]["e_teff"] != together[5]["e_teff"]


def test_a_batch_prepared_in_another_thread_gives_the_same_rows(pipe, spectra):
    """The engine's look-ahead: prepare (checks, noise, inputs) in one thread, finish in another, same numbers."""
    from concurrent.futures import ThreadPoolExecutor

    assert not pipe.prepares_ahead  # on a CPU the engine does not prepare ahead, but it may be asked to
    pipe.batch_size = 4  # two device batches: the first one's input is made in prepare, the second in finish
    expected = pipe.predict(spectra)
    with ThreadPoolExecutor(1) as other:
        prepared = other.submit(pipe.prepare, spectra).result()
    assert prepared.first is not None and len(prepared.todo) == len(spectra) > 4
    assert pipe.finish(prepared) == expected


def test_nominal_is_the_forward_of_the_numpy_preprocessed_spectrum(pipe, spectra):
    rows = pipe.predict(spectra[:3])
    x = np.stack([preprocess_one(s.wavelength, s.flux, s.ivar)[0] for s in spectra[:3]])
    pipe.model.conv_impl = "direct"
    try:
        with torch.inference_mode():
            out = pipe.model(torch.from_numpy(x)[:, None]).numpy()
    finally:
        pipe.model.conv_impl = "auto"
    for i, row in enumerate(rows):
        values, _ = normalized_row(row)
        # fft in a batch of 27 vs direct in a batch of 3, numpy vs torch log: float32 rounding
        assert np.all(np.abs(values - out[i]) <= 1e-4 * np.maximum(1.0, np.abs(out[i]))), (values, out[i])


def test_pipeline_matches_the_baseline(pipe, spectra):
    """Batched torch draws on the device = numpy draws one by one, with the same noise."""
    rows = pipe.predict(spectra[:2])
    base = baseline_predict(pipe.model, spectra[:2], DRAWS, 7, batch_draws=True)
    assert pipe.model.conv_impl == "auto"  # the baseline restores it
    for a, b in zip(rows, base):
        assert close(a, b, 1e-4), (a, b)


def test_failed_spectra_become_flagged_rows_without_killing_the_batch(pipe, spectra):
    good = spectra[0]
    wl = good.wavelength
    all_nan = Spectrum("boss/nan.fits", 1, 0, "boss", wl, np.full_like(good.flux, np.nan), good.ivar)
    outside = Spectrum("boss/red.fits", 1, 0, "boss", np.linspace(9000, 10000, 500),
                       np.ones(500, np.float32), np.ones(500, np.float32))
    no_error = Spectrum("boss/neg.fits", 1, 0, "boss", wl, good.flux, -np.ones_like(good.ivar))
    apogee = Spectrum("apogee/a.fits", 1, 0, "apogee", wl, good.flux, good.ivar)
    batch = [all_nan, good, outside, no_error, apogee]
    rows = pipe.predict(batch)
    assert [r["result_flags"] & 1 for r in rows] == [1, 0, 1, 1, 1]
    for i in (0, 2, 3, 4):
        assert rows[i]["flag_bad"] is True and rows[i]["error"]
        assert all(math.isnan(rows[i][k]) for k in FIELDS)
    assert "overlap" in rows[2]["error"] and "APOGEE" in rows[4]["error"]
    assert close(rows[1], pipe.predict([good])[0], 5e-5)


def test_without_seed_draws_are_fresh(weights, spectra):
    pipe = BossNetPipeline(weights=weights, device="cpu", draws=4)
    a, b = pipe.predict(spectra[:1])[0], pipe.predict(spectra[:1])[0]
    assert a["teff"] == pytest.approx(b["teff"], rel=1e-6)
    assert a["e_teff"] != b["e_teff"]


def test_zero_draws_give_nan_uncertainties(weights, spectra):
    pipe = BossNetPipeline(weights=weights, device="cpu", draws=0, seed=1)
    row = pipe.predict(spectra[:1])[0]
    assert math.isfinite(row["teff"]) and math.isnan(row["e_teff"])


def test_demo_weights_declared_by_the_spec(spectra, tmp_path_factory):
    from workers.weights.formats import WeightsError

    with pytest.raises(WeightsError, match="bossnet needs weights"):
        BossNetPipeline(draws=2, seed=3)
    cache = tmp_path_factory.getbasetemp() / "weights-cache"  # the session's (tests/conftest.py)
    pipe = BossNetPipeline(weights=BossNetPipeline.spec.demo_weights_path(cache), draws=2, seed=3)
    assert pipe.demo is True and pipe.weights_source.name == "bossnet-demo"
    row = pipe.predict(spectra[:1])[0]
    assert set(FIELDS) <= set(row) and isinstance(row["result_flags"], int)
