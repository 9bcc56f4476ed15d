"""ApogeeDistBCNN: forward pass against the formula-weight vectors, MC dropout, weights I/O."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.astronn_dist.network import (
    DROPOUT,
    STATE_KEY,
    ApogeeDistBCNN,
    demo_state_dict,
    demo_weights_path,
    load_astronn_dist,
    make_generators,
    spectrum_seed,
)
from workers.formula_weights import formula_state_dict
from workers.weights import WeightsError, save_pt

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vectors():
    return json.loads((DATA / "network_outputs.json").read_text())["astronn_dist"]


@pytest.fixture(scope="module")
def formula_model():
    model = ApogeeDistBCNN()
    model.load_state_dict(formula_state_dict(model))
    return model.eval()


@pytest.fixture(scope="module")
def x(formula_model):
    norm_flux = np.load(DATA / "astronn_continuum.npz")["norm_flux"]
    return formula_model.standardize(norm_flux[None])


def test_state_dict_keys_shapes_dtypes():
    sd = ApogeeDistBCNN().state_dict()
    expected = {
        "input_mean": ((7514,), torch.float64), "labels_std": ((1,), torch.float64),
        "conv1.weight": ((2, 1, 8), torch.float32), "conv1.bias": ((2,), torch.float32),
        "conv2.weight": ((4, 2, 8), torch.float32), "conv2.bias": ((4,), torch.float32),
        "dense_1.weight": ((192, 7512), torch.float32), "dense_1.bias": ((192,), torch.float32),
        "dense_2.weight": ((64, 192), torch.float32), "dense_2.bias": ((64,), torch.float32),
        "dense_output.weight": ((1, 64), torch.float32), "dense_output.bias": ((1,), torch.float32),
        "dense_var.weight": ((1, 64), torch.float32), "dense_var.bias": ((1,), torch.float32),
    }
    assert {k: (tuple(v.shape), v.dtype) for k, v in sd.items()} == expected


def test_no_dropout_matches_vector(formula_model, x, vectors):
    assert formula_model.labels_std.item() == vectors["labels_std"]
    with torch.no_grad():
        pred, logvar = formula_model(x)
    ref = vectors["no_dropout"]
    assert pred.item() == pytest.approx(ref["prediction"], rel=1e-5)
    assert logvar.item() == pytest.approx(ref["log_variance"], rel=1e-5)


def test_mc_dropout_matches_vector(formula_model, x, vectors):
    n = 3000
    pred, logvar = formula_model.mc_forward(x, n, make_generators([11]))
    assert pred.shape == logvar.shape == (1, n)
    ref = vectors["mc_dropout_20000"]
    tol = 5 * ref["prediction_sd"] / np.sqrt(n) + 0.006
    assert abs(pred.mean().item() - ref["prediction_mean"]) < tol
    assert pred.std().item() == pytest.approx(ref["prediction_sd"], rel=0.1)
    assert logvar.mean().item() == pytest.approx(ref["log_variance_mean"], abs=0.03)
    # dropout on: passes differ; every prediction positive (softplus)
    assert pred.std().item() > 0 and (pred > 0).all()


def test_train_mode_forward_is_mc_dropout(formula_model, x, vectors):
    """The plain forward in train() mode (the baseline's path) samples the same distribution."""
    n = 1500
    torch.manual_seed(0)
    formula_model.train()
    try:
        with torch.no_grad():
            pred, _ = formula_model(x.repeat(n, 1))
    finally:
        formula_model.eval()
    ref = vectors["mc_dropout_20000"]
    assert abs(pred.mean().item() - ref["prediction_mean"]) < 5 * ref["prediction_sd"] / np.sqrt(n) + 0.006
    assert pred.std().item() == pytest.approx(ref["prediction_sd"], rel=0.15)


def test_mask_keep_rate_and_independence():
    model = ApogeeDistBCNN()
    keep = model._masks(make_generators([1, 2]), 50)
    assert keep.shape == (2, 50, 2 * 7514 + 7512 + 192) and keep.dtype == torch.float32
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    sites = torch.split(keep, list(model.mask_sizes), dim=2)
    for m in sites:
        assert m.mean().item() == pytest.approx(1 - DROPOUT, abs=0.01)
    # each pass has its own mask, and the two spectra differ
    assert not torch.equal(keep[0, 0], keep[0, 1])
    assert not torch.equal(keep[0], keep[1])
    # a spectrum's masks depend on its generator only, and slicing the passes does not
    # change the stream (CPU)
    g = make_generators([2])
    sliced = torch.cat([model._masks(g, 20), model._masks(g, 30)], dim=1)
    assert torch.equal(sliced[0], keep[1])


def test_mc_reproducible_and_batch_independent(formula_model, x):
    passes = 50
    rng = np.random.default_rng(0)
    xs = x.repeat(5, 1) + torch.as_tensor(0.01 * rng.standard_normal((5, 7514)), dtype=torch.float32)
    seeds = [spectrum_seed(3, f"apStar-{i}.fits", 1, 0) for i in range(5)]
    # 2 spectra per step, so the spectra are split over steps
    full, full_lv = formula_model.mc_forward(xs, passes, make_generators(seeds), rows_per_chunk=100)
    again, _ = formula_model.mc_forward(xs, passes, make_generators(seeds), rows_per_chunk=100)
    assert torch.equal(full, again)
    # one spectrum, its passes in slices of 16
    alone, alone_lv = formula_model.mc_forward(xs[3:4], passes, make_generators(seeds[3:4]),
                                               rows_per_chunk=16)
    # same masks; only float batch effects of the matrix products remain
    torch.testing.assert_close(alone[0], full[3], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alone_lv[0], full_lv[3], rtol=1e-5, atol=1e-6)
    other, _ = formula_model.mc_forward(xs[3:4], passes, make_generators([seeds[3] + 1]))
    assert not torch.allclose(other, alone)


def test_spectrum_seed():
    a = spectrum_seed(1, "x.fits", 1, 0)
    assert a == spectrum_seed(1, "x.fits", 1, 0)
    assert len({a, spectrum_seed(2, "x.fits", 1, 0), spectrum_seed(1, "x.fits", 2, 0),
                spectrum_seed(1, "x.fits", 1, 1), spectrum_seed(1, "y.fits", 1, 0)}) == 5
    assert 0 <= a < 2**63


def test_pt_round_trip(tmp_path):
    sd = demo_state_dict()
    path = save_pt({STATE_KEY: sd}, tmp_path / "w.pt", demo=True)
    model, loaded = load_astronn_dist(path, "cpu")
    assert loaded.demo and model.training is False
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.unexpected == []
    out = model.state_dict()
    assert out.keys() == sd.keys()
    for k, v in sd.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v), k
    assert out["input_mean"].dtype == torch.float64


def test_demo_weights_written_once_stable_and_marked(tmp_path):
    a = demo_weights_path(tmp_path / "a")
    b = demo_weights_path(tmp_path / "b")
    assert a.name == "astronn_dist-demo.pt" and a.with_name(a.name + ".demo").exists()
    sha = hashlib.sha256(a.read_bytes()).hexdigest()
    assert sha == hashlib.sha256(b.read_bytes()).hexdigest()  # seeded: identical bytes
    mtime = a.stat().st_mtime_ns
    assert demo_weights_path(tmp_path / "a") == a and a.stat().st_mtime_ns == mtime  # not rewritten
    obj = torch.load(a, weights_only=True)
    assert set(obj) == {STATE_KEY}
    model, loaded = load_astronn_dist(a, "cpu")
    assert loaded.demo and loaded.sha256 == sha
    # plausible outputs: fakemag of a few tens, a few percent error
    flux = np.load(DATA / "astronn_continuum.npz")["norm_flux"][None]
    pred, logvar = model.mc_forward(model.standardize(flux), 100, make_generators([0]))
    fakemag = pred.mean().item() * model.labels_std.item()
    assert 10 < fakemag < 500
    rel = np.sqrt(np.exp(logvar.mean().item()) + pred.var().item()) * model.labels_std.item() / fakemag
    assert 0.01 < rel < 0.2


def _saved(tmp_path, sd):
    return save_pt({STATE_KEY: sd}, tmp_path / "w.pt")


def test_missing_key_is_named(tmp_path):
    sd = demo_state_dict()
    del sd["dense_var.bias"]
    with pytest.raises(WeightsError, match=r"dense_var\.bias"):
        load_astronn_dist(_saved(tmp_path, sd), "cpu")


def test_unexpected_key_ignored(tmp_path):
    sd = demo_state_dict()
    sd["optimizer_note"] = torch.zeros(3)
    model, loaded = load_astronn_dist(_saved(tmp_path, sd), "cpu")
    assert loaded.unexpected == ["optimizer_note"]
    assert not loaded.demo


def test_shape_mismatch_is_named(tmp_path):
    sd = demo_state_dict()
    sd["dense_1.weight"] = torch.zeros(192, 7514)
    with pytest.raises(WeightsError, match=r"dense_1\.weight \(192, 7514\) \(expected \(192, 7512\)\)"):
        load_astronn_dist(_saved(tmp_path, sd), "cpu")


def test_missing_state_key(tmp_path):
    path = save_pt(demo_state_dict(), tmp_path / "bare.pt")  # a bare state dict, no wrapper
    with pytest.raises(WeightsError, match="model_state_dict"):
        load_astronn_dist(path, "cpu")


def test_imports_stay_light():
    """schema/photometry load neither torch nor astroNN; network and pipeline load no TensorFlow."""
    code = (
        "import sys\n"
        "import workers.astronn_dist, workers.astronn_dist.schema, workers.astronn_dist.photometry\n"
        "heavy = [m for m in ('torch', 'astroNN', 'tensorflow') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import workers.astronn_dist.network, workers.astronn_dist.pipeline\n"
        "assert 'torch' in sys.modules\n"
        "assert 'tensorflow' not in sys.modules and 'astroNN' not in sys.modules\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
