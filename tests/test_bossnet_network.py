"""BossNet network: published state-dict layout, whole-network vectors, weight loading, demo weights."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.bossnet import network as N
from workers.bossnet import weights as W
from workers.bossnet.network import BossNet, count_parameters
from workers.bossnet.weights import demo_weights_path, load_bossnet
from workers import linear as linear_module
from specq.testing.formula_weights import formula_state_dict
from workers.weights.formats import DEMO_MARKER, WeightsError, save_chunks, save_pt

DATA = Path(__file__).parent / "data"
CASES = ["clean", "gaps", "negative_flux", "partial_coverage", "all_ivar_zero"]


def published_shapes() -> dict[str, tuple[int, ...]]:
    """The key table of shared/spec/bossnet.md, written out."""
    shapes: dict[str, tuple[int, ...]] = {"pos_enc.inv_freq": (1,)}

    def bn(prefix, c):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["first_conv.conv_layer.weight"] = (4, 2, 30)
    shapes["first_conv.conv_layer.bias"] = (4,)
    bn("first_conv.bn", 4)
    for i, (c_in, c_out) in enumerate([(4, 8), (8, 16), (16, 32), (32, 64)]):
        shapes[f"res_blocks.{i}.conv1.weight"] = (c_out, c_in, 30)
        bn(f"res_blocks.{i}.bn1", c_out)
        shapes[f"res_blocks.{i}.conv2.weight"] = (c_out, c_out, 30)
        bn(f"res_blocks.{i}.bn2", c_out)
    for i in range(6):
        shapes[f"linear_sequential.{i}.linear_layer.weight"] = (1024, 65536 if i == 0 else 1024)
        shapes[f"linear_sequential.{i}.linear_layer.bias"] = (1024,)
    shapes["linear_sequential.6.weight"] = (4, 1024)
    shapes["linear_sequential.6.bias"] = (4,)
    return shapes


@pytest.fixture(scope="module")
def formula_model():
    with torch.device("meta"):
        model = BossNet()
    model.load_state_dict(formula_state_dict(model), assign=True)
    return model


@pytest.fixture(scope="module")
def chunk_folder(tmp_path_factory, formula_model):
    return save_chunks(formula_model.state_dict(), tmp_path_factory.mktemp("bossnet") / "model_boss")


@pytest.fixture(scope="module")
def network_inputs():
    with np.load(DATA / "bossnet_preprocess.npz") as npz:
        x = np.stack([npz[f"{c}/log_scaled"] for c in CASES])
    expected = json.loads((DATA / "network_outputs.json").read_text())["bossnet"]
    return torch.from_numpy(x)[:, None, :], np.array([expected[c]["normalized_output"] for c in CASES])


def test_state_dict_keys_and_shapes_are_the_published_ones():
    with torch.device("meta"):
        model = BossNet()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == published_shapes()
    assert count_parameters(model) == 72_607_520


@pytest.mark.parametrize("conv_impl", ["direct", "fft"])
def test_network_vectors(formula_model, network_inputs, conv_impl):
    x, expected = network_inputs
    formula_model.conv_impl = conv_impl
    with torch.inference_mode():
        out = formula_model(x).double().numpy()
    assert out.shape == (len(CASES), 4)
    assert np.all(np.abs(out - expected) <= 5e-4 * np.maximum(1.0, np.abs(expected)))


def test_fft_agrees_with_direct_and_follows_weight_changes(formula_model, network_inputs):
    x, _ = network_inputs
    x = torch.cat([x, x.flip(-1)[:2] * 0.5])
    with torch.inference_mode():
        formula_model.conv_impl = "direct"
        direct = formula_model(x)
        formula_model.conv_impl = "fft"
        fft = formula_model(x)
    scale = direct.abs().clamp(min=1.0)
    # float32 rounding: the direct way alone moves by 3e-5 between batch 1 and batch 7 (MKL's
    # blocking), and the fft way sums the linear layers in oneDNN's order.
    assert ((fft - direct).abs() / scale).max() < 5e-5
    # the frequency-domain plan is rebuilt when the weights change in place
    saved = formula_model.res_blocks[3].bn2.running_mean.clone()
    try:
        with torch.no_grad():
            formula_model.res_blocks[3].bn2.running_mean.add_(0.5)
        with torch.inference_mode():
            changed_fft = formula_model(x)
            formula_model.conv_impl = "direct"
            changed_direct = formula_model(x)
        assert not torch.allclose(changed_fft, fft)
        assert ((changed_fft - changed_direct).abs() / changed_direct.abs().clamp(min=1.0)).max() < 5e-5
    finally:
        with torch.no_grad():
            formula_model.res_blocks[3].bn2.running_mean.copy_(saved)
        formula_model.conv_impl = "auto"


def test_fft_passes_hold_a_fixed_activation_size_and_leave_outputs_alone(formula_model, monkeypatch):
    from workers.bossnet.sources import SOURCES

    boss = formula_model
    rvs = BossNet(**SOURCES["gaia_rvs"].model_args, conv_impl="fft")
    assert boss._fft_chunk(torch.zeros(1, 1, 3900)) == N.FFT_CHUNK_ROWS  # 64 channels: the measured 24 rows
    rows = rvs._fft_chunk(torch.zeros(1, 1, 2401))  # 8 channels: as many bytes in more rows
    assert rows > 8 * N.FFT_CHUNK_ROWS
    assert rows * rvs._fft_plan(2401, torch.device("cpu"), torch.float32).row_bytes <= N.FFT_CHUNK_BYTES
    torch.manual_seed(3)
    x = torch.randn(2 * rows + 5, 1, 2401)
    with torch.inference_mode():
        passes = rvs(x)
        rvs.fft_chunk_rows = 7
        monkeypatch.setattr(N, "FFT_CHUNK_BYTES", 0)  # passes of 7 rows
        small = rvs(x)
    # each row's transforms are its own: the pass size changes at most the matmul's blocking
    assert ((passes - small).abs() / small.abs().clamp(min=1.0)).max() < 1e-5


def test_auto_picks_fft_on_cpu_and_rejects_unknown():
    with torch.device("meta"):
        model = BossNet()
    assert model.resolved_conv_impl(torch.device("cpu")) == "fft"
    assert model.resolved_conv_impl(torch.device("cuda")) == "direct"
    with pytest.raises(ValueError):
        model.conv_impl = "winograd"


def test_ten_chunk_round_trip(chunk_folder, formula_model):
    names = sorted(p.name for p in chunk_folder.iterdir())
    assert names == [f"model_chunk_{i}" for i in range(10)]
    model, loaded = load_bossnet(chunk_folder, "cpu")
    again, loaded_again = load_bossnet(chunk_folder.parent, "cpu")  # the folder above works too
    ref = formula_model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, ref[key]), key
    assert loaded.sha256 == loaded_again.sha256 and len(loaded.sha256) == 64
    assert loaded.demo is False and loaded.unexpected == []
    assert not model.training


def test_single_pt_round_trip_and_same_sha_for_same_bytes(tmp_path, chunk_folder, formula_model):
    blob = b"".join((chunk_folder / f"model_chunk_{i}").read_bytes() for i in range(10))
    pt = tmp_path / "bossnet.pt"
    pt.write_bytes(blob)
    model, loaded = load_bossnet(pt, "cpu")
    _, from_chunks = load_bossnet(chunk_folder, "cpu")
    assert loaded.sha256 == from_chunks.sha256
    ref = formula_model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_missing_unexpected_fixed_and_misshapen_keys(tmp_path, formula_model, caplog):
    sd = dict(formula_model.state_dict())
    # absent fixed buffers are filled; unexpected keys are reported by name and ignored
    for key in [k for k in sd if W.is_fixed_buffer(k)]:
        del sd[key]
    sd["head.extra"] = torch.zeros(3)
    path = save_pt(sd, tmp_path / "w.pt")
    with caplog.at_level(logging.WARNING, logger="workers.bossnet.weights"):
        model, loaded = load_bossnet(path, "cpu")
    assert loaded.unexpected == ["head.extra"]
    assert "head.extra" in caplog.text
    assert model.pos_enc.inv_freq.tolist() == [1.0]
    assert model.res_blocks[0].bn1.num_batches_tracked.item() == 0
    # a missing learned tensor is an error naming it
    sd2 = dict(formula_model.state_dict())
    del sd2["res_blocks.2.bn1.running_var"]
    save_pt(sd2, tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match=r"res_blocks\.2\.bn1\.running_var"):
        load_bossnet(tmp_path / "missing.pt", "cpu")
    # a wrong shape names the key and both shapes
    sd3 = dict(formula_model.state_dict())
    sd3["linear_sequential.6.weight"] = torch.zeros(3, 1024)
    save_pt(sd3, tmp_path / "shape.pt")
    with pytest.raises(WeightsError, match=r"linear_sequential\.6\.weight.*\(3, 1024\).*\(4, 1024\)"):
        load_bossnet(tmp_path / "shape.pt", "cpu")


def test_demo_weights_written_once_with_marker(tmp_path):
    folder = demo_weights_path(tmp_path)
    assert folder == tmp_path / W.DEMO_FOLDER
    assert (folder / DEMO_MARKER).exists()
    assert len(list(folder.glob("model_chunk_*"))) == 10
    mtime = (folder / "model_chunk_0").stat().st_mtime_ns
    assert demo_weights_path(tmp_path) == folder
    assert (folder / "model_chunk_0").stat().st_mtime_ns == mtime  # not rewritten
    assert [p.name for p in tmp_path.iterdir()] == [W.DEMO_FOLDER]  # no temporary left behind
    model, loaded = load_bossnet(folder, "cpu")
    assert loaded.demo
    # seeded: the same weights as a fresh draw under the fixed seed, global RNG untouched
    state = torch.random.get_rng_state()
    fresh = W.demo_state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(v, fresh[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("source", ["boss", "apogee", "gaia_rvs", "gaia_xp"])
def test_the_demo_first_kernel_is_that_of_the_demo_weights(source):
    assert torch.equal(W._demo_first_kernel(source), W.demo_state_dict(source=source)["first_conv.conv_layer.weight"])


def test_demo_weights_without_their_marker_are_still_labelled_demo(tmp_path):
    copied = tmp_path / "copied"
    shutil.copytree(demo_weights_path(tmp_path / "cache"), copied)
    (copied / DEMO_MARKER).unlink()  # copied by hand, the marker left behind
    assert load_bossnet(copied, "cpu")[1].demo
    other = W.demo_state_dict()
    other["first_conv.conv_layer.weight"] = other["first_conv.conv_layer.weight"] * 1.01  # any other weights are not
    assert not load_bossnet(save_chunks(other, tmp_path / "other"), "cpu")[1].demo


def test_demo_weights_race_loser_uses_winners_folder(tmp_path, monkeypatch):
    """A process that finishes second finds the folder in place and uses it."""
    tiny = {"w": torch.arange(4.0)}
    monkeypatch.setattr(W, "demo_state_dict", lambda seed=W.DEMO_SEED, source="boss": tiny)
    real_rename = os.rename

    def rename_after_rival(src, dst):
        save_chunks(tiny, Path(dst), demo=True)  # the rival wins while we were writing
        return real_rename(src, dst)

    monkeypatch.setattr(W.os, "rename", rename_after_rival)
    folder = demo_weights_path(tmp_path)
    assert folder == tmp_path / W.DEMO_FOLDER and (folder / DEMO_MARKER).exists()
    assert [p.name for p in tmp_path.iterdir()] == [W.DEMO_FOLDER]


def test_linear_layers_through_onednn_match_the_published_modules(formula_model, network_inputs, monkeypatch):
    x, _ = network_inputs
    with torch.inference_mode():
        features = formula_model._pooled(formula_model._features_direct(x))
        published = formula_model.linear_sequential(features)
        formula_model.conv_impl = "fft"
        try:
            fast = formula_model._linear_layers(features)
            monkeypatch.setattr(linear_module, "_ONEDNN", False)  # a torch without oneDNN: torch's ops serve
            fallback = formula_model._linear_layers(features)
        finally:
            formula_model.conv_impl = "auto"
    torch.testing.assert_close(fallback, published, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fast, published, rtol=5e-5, atol=5e-5)


def test_pooling_pass_is_torchs_adaptive_average_pool_bit_for_bit():
    gen = torch.Generator().manual_seed(1)
    for length, n_out in ((1950, 1024), (37, 16), (16, 16), (5, 8)):
        buf = torch.randn(3, 4, length + 7, generator=gen)
        buf[..., length:] = torch.nan  # beyond the length: never read
        out = torch.empty(3, 4 * n_out)
        N.pooling.pool_into(buf, length, out)
        want = torch.nn.functional.adaptive_avg_pool1d(buf[..., :length], n_out).reshape(3, -1)
        assert torch.equal(out, want)
    with pytest.raises(ValueError, match="contiguous"):
        N.pooling.pool_into(buf[..., :length], length, out)


@pytest.mark.parametrize("shape", [(3, 4, 33), (24, 64, 1025)])  # below and above the blocked-transpose size
def test_frequency_major_transposes_are_exact_and_each_others_inverse(shape):
    from workers.bossnet import fft

    x = torch.randn(*shape, dtype=torch.complex64)
    inner = fft._rotated(x, 2)
    assert inner.is_contiguous() and torch.equal(inner, x.permute(2, 0, 1))
    outer = fft._rotated(inner, 1)
    assert outer.is_contiguous() and torch.equal(outer, x)
