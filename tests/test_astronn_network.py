"""ApogeeDistBCNN: forward pass against the formula-weight vectors, MC dropout, weights I/O."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
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
    spectrum_seed,
    step_threads,
)
from workers.astronn_dist import dropout
from specq.testing.formula_weights import formula_state_dict
from workers.weights.formats import WeightsError, save_pt

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
    pred, logvar = formula_model.mc_forward(x, n, [11])
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
    layout = ApogeeDistBCNN().mask_layout
    assert layout.padded == 7520 and layout.sizes == (15040, 7512, 192) and layout.words_per_pass == 5686
    seeds = torch.tensor([1, 2], dtype=torch.int64).repeat_interleave(50)
    passes = torch.arange(50).repeat(2)
    keep = dropout.keep_masks(seeds, passes, layout).view(2, 50, -1)
    assert keep.shape == (2, 50, sum(layout.sizes)) and keep.dtype == torch.float32
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    for m in torch.split(keep, list(layout.sizes), dim=2):
        assert m.mean().item() == pytest.approx(1 - DROPOUT, abs=0.01)
    assert keep.mean().item() == pytest.approx(45875 / 65536, abs=0.002)
    # each pass has its own mask, and the two spectra differ
    assert not torch.equal(keep[0, 0], keep[0, 1])
    assert not torch.equal(keep[0], keep[1])
    # counter-based: a pass's mask is the same whichever rows are asked for together
    alone = dropout.keep_masks(torch.tensor([2]), torch.tensor([37]), layout)
    assert torch.equal(alone[0], keep[1, 37])


def test_mask_words_are_splitmix64():
    """The torch int64 arithmetic gives the reference splitmix64 stream (Python integers)."""
    layout = ApogeeDistBCNN().mask_layout
    seed, p = 0x5DEECE66D, 3
    words = dropout.mask_words(torch.tensor([seed]), torch.tensor([p]), layout)[0]
    m64 = (1 << 64) - 1
    for q in (0, 1, 4000, layout.words_per_pass - 1):
        z = (seed + (p * layout.words_per_pass + q + 1) * 0x9E3779B97F4A7C15) & m64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m64
        z ^= z >> 31
        assert int(words[q]) & m64 == z


def test_numba_kernel_matches_torch_ops(formula_model, x):
    """The fused CPU kernel and the torch ops (the GPU path) make the same masks and values."""
    assert dropout.cpu_kernel() is not None  # numba is a dependency: its absence is a broken install
    passes = 40
    rng = np.random.default_rng(1)
    xs = x.repeat(3, 1) + torch.as_tensor(0.01 * rng.standard_normal((3, 7514)), dtype=torch.float32)
    seeds = [spectrum_seed(5, f"apStar-{i}.fits", 1, 0) for i in range(3)]
    fast, fast_lv = formula_model.mc_forward(xs, passes, seeds, kernel="numba")
    ref, ref_lv = formula_model.mc_forward(xs, passes, seeds, kernel="torch")
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_lv, ref_lv, rtol=1e-5, atol=1e-6)
    assert fast.std(dim=1).min() > 0  # dropout really on


def test_kernel_rows_equal_torch_rows_unit_for_unit():
    """The dense_1 input and masks of every pass row, unit for unit (values to float rounding)."""
    layout = dropout.MaskLayout(7514, 192)
    gen = torch.Generator().manual_seed(3)
    hpad = torch.relu(torch.randn(3, 2, layout.padded, generator=gen))
    hpad[:, :, :3] = 0  # the "same" padding the network leaves there
    hpad[:, :, 3 + 7514:] = 0
    phases = dropout.phase_split(hpad)
    assert phases[2, 1, 3, 17] == hpad[2, 1, 4 * 17 + 3]
    w2, b2 = torch.randn(4, 2, 8, generator=gen), torch.randn(4, generator=gen)
    seeds = torch.tensor([7, 2**62 + 5, 123456789], dtype=torch.int64)
    rows = torch.arange(90)
    row_spectrum, row_pass = rows % 3, rows // 3 + 11
    flat, keep3 = dropout.pooled_rows_cpu(dropout.cpu_kernel(), phases, seeds, row_spectrum, row_pass, w2, b2, layout)
    ref_flat, ref_keep3 = dropout.pooled_rows_torch(hpad, seeds, row_spectrum, row_pass, w2, b2, layout)
    assert torch.equal(keep3, ref_keep3)
    # a unit masked on one side only would differ by the whole activation (~1), not 1e-5
    torch.testing.assert_close(flat, ref_flat, rtol=1e-5, atol=1e-5)


def test_kernel_loop_orders_give_the_same_rows_bit_for_bit():
    """conv2 one input channel at a time (x86 below AVX-512) or one output channel at a time."""
    layout = dropout.MaskLayout(7514, 192)
    gen = torch.Generator().manual_seed(4)
    phases = dropout.phase_split(torch.relu(torch.randn(2, 2, layout.padded, generator=gen)))
    w2, b2 = torch.randn(4, 2, 8, generator=gen), torch.randn(4, generator=gen)
    seeds = torch.tensor([9, 2**61 + 3], dtype=torch.int64)
    rows = torch.arange(20)
    args = (dropout.cpu_kernel(), phases, seeds, rows % 2, rows // 2, w2, b2, layout)
    by_input, by_output = dropout.pooled_rows_cpu(*args, by_input=True), dropout.pooled_rows_cpu(*args, by_input=False)
    assert torch.equal(by_input[0], by_output[0]) and torch.equal(by_input[1], by_output[1])
    assert (by_input[0] > 0).float().mean() > 0.2  # real activations, not an all-zero output


@pytest.mark.parametrize("slow", [True, False])
def test_kernel_loop_order_is_the_one_measured_faster(slow):
    calls = []

    def run(by_input):
        calls.append(by_input)
        if by_input == slow:
            time.sleep(0.003)

    assert dropout.faster_order(run, tries=3) is (not slow)
    # both orders timed in turns, after one untimed call each
    assert calls == [True, False] * 4


def test_kernel_loop_order_is_measured_once_per_process():
    dropout.conv_by_input_channel.cache_clear()
    first = dropout.conv_by_input_channel()
    assert isinstance(first, bool)
    assert dropout.conv_by_input_channel() is first
    assert dropout.conv_by_input_channel.cache_info().misses == 1


@pytest.mark.parametrize("kernel", ["auto", "torch"])
def test_mc_reproducible_and_batch_independent(formula_model, x, kernel):
    passes = 50
    rng = np.random.default_rng(0)
    xs = x.repeat(5, 1) + torch.as_tensor(0.01 * rng.standard_normal((5, 7514)), dtype=torch.float32)
    seeds = [spectrum_seed(3, f"apStar-{i}.fits", 1, 0) for i in range(5)]
    # steps of 70 rows: spectra are split across steps
    full, full_lv = formula_model.mc_forward(xs, passes, seeds, rows_per_chunk=70, kernel=kernel)
    again, _ = formula_model.mc_forward(xs, passes, seeds, rows_per_chunk=70, kernel=kernel)
    assert torch.equal(full, again)
    # one spectrum, its passes in slices of 16
    alone, alone_lv = formula_model.mc_forward(xs[3:4], passes, seeds[3:4], rows_per_chunk=16, kernel=kernel)
    # same masks; only float batch effects of the matrix products remain
    torch.testing.assert_close(alone[0], full[3], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alone_lv[0], full_lv[3], rtol=1e-5, atol=1e-6)
    other, _ = formula_model.mc_forward(xs[3:4], passes, [seeds[3] + 1], kernel=kernel)
    assert not torch.allclose(other, alone)


def test_mc_steps_side_by_side_equal_one_thread_bit_for_bit(formula_model, x):
    """Steps on two threads at once give exactly the rows of the same steps on one thread."""
    passes = 30
    xs = x.repeat(3, 1) * torch.tensor([[1.0], [0.9], [1.1]])
    seeds = [spectrum_seed(8, f"apStar-{i}.fits", 1, 0) for i in range(3)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        side_by_side = formula_model.mc_forward(xs, passes, seeds, rows_per_chunk=16)
        torch.set_num_threads(1)
        one_thread = formula_model.mc_forward(xs, passes, seeds, rows_per_chunk=16)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(side_by_side[0], one_thread[0])
    assert torch.equal(side_by_side[1], one_thread[1])


def test_step_threads_run_torch_on_one_thread_each():
    threads = torch.get_num_threads()
    pool = step_threads(2)
    assert step_threads(2) is pool  # made once
    assert list(pool.map(lambda _: torch.get_num_threads(), range(4))) == [1, 1, 1, 1]
    assert torch.get_num_threads() == threads  # the process's count is left as it was


def test_mc_forward_rejects_bad_arguments(formula_model, x):
    with pytest.raises(ValueError, match="seeds"):
        formula_model.mc_forward(x, 10, [1, 2])
    with pytest.raises(ValueError, match="seeds must"):
        formula_model.mc_forward(x, 10, [-1])
    with pytest.raises(ValueError, match="kernel"):
        formula_model.mc_forward(x, 10, [1], kernel="fast")


def test_float_ops_count_the_network_products(formula_model, x):
    # torch's own counter over one plain forward: the same products, per layer
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        formula_model(x)
    counted = {name.rsplit(".", 1)[-1]: sum(ops.values())
               for name, ops in counter.get_flop_counts().items() if name != "Global"}
    ours = formula_model.float_ops(passes=1)
    assert ours["conv1"] == counted["conv1"] and ours["dense_1"] == counted["dense_1"]
    assert ours["dense_2"] == counted["dense_2"]
    assert ours["heads"] == counted["dense_output"] + counted["dense_var"]
    # conv2 is charged only where the max-pool reads it (the last 2 of 7514 positions are dropped)
    assert ours["conv2"] == counted["conv2"] * (4 * (7514 // 4)) // 7514
    per_pass = {k: v for k, v in formula_model.float_ops(passes=100).items() if k != "conv1"}
    assert per_pass == {k: 100 * v for k, v in ours.items() if k != "conv1"}


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
    pred, logvar = model.mc_forward(model.standardize(flux), 100, [0])
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
    assert loaded.demo  # the demo's tensors, with or without the marker file


def test_shape_mismatch_is_named(tmp_path):
    sd = demo_state_dict()
    sd["dense_1.weight"] = torch.zeros(192, 7514)
    with pytest.raises(WeightsError, match=r"dense_1\.weight \(192, 7514\) \(expected \(192, 7512\)\)"):
        load_astronn_dist(_saved(tmp_path, sd), "cpu")


def test_a_value_that_is_not_a_tensor_is_named(tmp_path):
    sd = demo_state_dict()
    sd["labels_std"] = 300.0
    with pytest.raises(WeightsError, match=r"not tensors: labels_std \(float\)"):
        load_astronn_dist(_saved(tmp_path, sd), "cpu")


def test_demo_weights_without_their_marker_are_still_labelled_demo(tmp_path):
    path = save_pt({STATE_KEY: demo_state_dict()}, tmp_path / "copied.pt")  # no .demo file beside it
    assert not path.with_name(path.name + ".demo").exists()
    assert load_astronn_dist(path, "cpu")[1].demo
    other = demo_state_dict()
    other["dense_1.weight"] = other["dense_1.weight"] * 1.01  # any other weights are not
    assert not load_astronn_dist(save_pt({STATE_KEY: other}, tmp_path / "other.pt"), "cpu")[1].demo


def test_missing_state_key(tmp_path):
    path = save_pt(demo_state_dict(), tmp_path / "bare.pt")  # a bare state dict, no wrapper
    with pytest.raises(WeightsError, match="model_state_dict"):
        load_astronn_dist(path, "cpu")


def test_imports_stay_light():
    """schema/photometry load neither torch nor astroNN; network and pipeline load no TensorFlow,
    nor do astroNN's APOGEE tools and the distances computed."""
    code = (
        "import sys\n"
        "import workers.astronn_dist, workers.astronn_dist.schema, workers.astronn_dist.photometry\n"
        "heavy = [m for m in ('torch', 'astroNN', 'tensorflow') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import workers.astronn_dist.network, workers.astronn_dist.pipeline\n"
        "assert 'torch' in sys.modules\n"
        "assert 'tensorflow' not in sys.modules and 'astroNN' not in sys.modules\n"
        "from workers.astronn_dist.astronn import astronn_apogee\n"
        "from workers.astronn_dist.pipeline import summarize_passes\n"
        "astronn_apogee()\n"
        "out = summarize_passes([[0.5, 0.6]], [[-3.0, -3.0]], 300.0, [10.0], [0.1])\n"
        "assert out['nn_dist'][0] > 0\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow loaded'\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_mc_forward_follows_weight_changes_between_calls():
    from workers.astronn_dist.network import ApogeeDistBCNN, demo_state_dict

    model = ApogeeDistBCNN()
    model.load_state_dict(demo_state_dict())
    x = torch.randn(2, model.n_pixels, generator=torch.Generator().manual_seed(0)) * 0.1
    first, _ = model.mc_forward(x, 3, [1, 2])
    again, _ = model.mc_forward(x, 3, [1, 2])
    assert torch.equal(first, again)
    with torch.no_grad():
        model.dense_1.weight.mul_(1.5)  # in place: the folded copy must be rebuilt
    changed, _ = model.mc_forward(x, 3, [1, 2])
    assert not torch.allclose(changed, first)
    model.dense_1.weight = torch.nn.Parameter(model.dense_1.weight.detach() / 1.5)  # a new tensor
    back, _ = model.mc_forward(x, 3, [1, 2])
    torch.testing.assert_close(back, first, rtol=1e-5, atol=1e-6)
