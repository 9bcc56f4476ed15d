"""BossNet's opt-in precision: float32 stays the published arithmetic bit for bit, tf32 is
float32 off CUDA, bf16 deviates from float32 by a measured, bounded amount and says so."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from astropy.table import Table

from workers.bossnet.network import PRECISIONS, _precision_mode
from workers.bossnet.weights import demo_weights_path
from workers.bossnet.pipeline import OUTPUT_MEAN, OUTPUT_STD, BossNetPipeline
from conftest import bossnet_vector_spectra

CASES = ["clean", "gaps", "negative_flux"]
FIELDS = ["teff", "e_teff", "logg", "e_logg", "fe_h", "e_fe_h", "bn_v_r", "e_bn_v_r"]
DRAWS = 4
# bf16 − float32 in network units (see normalized()), demo weights, these 3 spectra × 4 draws:
# measured ≤ 3.5e-5 on the fft way and ≤ 2e-5 on the direct way (2.13 CPU build, AVX2);
# the bound leaves a factor of ~14 for other CPUs and BLAS builds.
BF16_BOUND = 5e-4


@pytest.fixture(scope="module")
def demo_weights(tmp_path_factory):
    # The folder conftest's isolated_env uses: module fixtures run before it, so name it here.
    return demo_weights_path(tmp_path_factory.getbasetemp() / "weights-cache")


@pytest.fixture(scope="module")
def pipe(demo_weights):
    return BossNetPipeline(weights=demo_weights, device="cpu", draws=DRAWS, seed=3)


@pytest.fixture(scope="module")
def spectra():
    return bossnet_vector_spectra(CASES)


@pytest.fixture(scope="module")
def float32_rows(pipe, spectra):
    return pipe.predict(spectra)


def normalized(row: dict) -> np.ndarray:
    """A row's values and uncertainties in network units (order logg, log Teff, [Fe/H], v_r)."""
    values = np.array([row["logg"], math.log10(row["teff"]), row["fe_h"], row["bn_v_r"]])
    errors = np.array([row["e_logg"], row["e_teff"] / (row["teff"] * math.log(10)), row["e_fe_h"], row["e_bn_v_r"]])
    return np.concatenate([(values - OUTPUT_MEAN) / OUTPUT_STD, errors / OUTPUT_STD])


def max_deviation(rows: list[dict], reference: list[dict]) -> float:
    return max(float(np.max(np.abs(normalized(a) - normalized(b)))) for a, b in zip(rows, reference))


# -- float32 and tf32: unchanged ---------------------------------------------------------

def test_default_is_float32_bit_for_bit(pipe, spectra, float32_rows):
    assert pipe.defaults.precision == pipe.effective_precision() == "float32"
    assert all("precision" not in row for row in float32_rows)  # float32 rows are as they were
    x = torch.linspace(-0.5, 0.5, 2 * 3900, dtype=torch.float32).reshape(2, 1, 3900)
    with torch.inference_mode():
        for impl in ("fft", "direct"):
            pipe.model.conv_impl = impl
            try:
                assert torch.equal(pipe.model(x), pipe.model(x, precision="float32"))
            finally:
                pipe.model.conv_impl = "auto"
    explicit = BossNetPipeline(weights=pipe.weights_source, device="cpu", draws=DRAWS, seed=3, precision="float32")
    assert explicit.predict(spectra) == float32_rows


def test_tf32_on_cpu_is_float32_exactly_and_says_so(pipe, spectra, float32_rows, caplog):
    tf32 = BossNetPipeline(weights=pipe.weights_source, device="cpu", draws=DRAWS, seed=3, precision="tf32")
    assert tf32.defaults.precision == "tf32" and tf32.effective_precision() == "float32"
    with caplog.at_level(logging.WARNING, logger="workers.bossnet.pipeline"):
        rows = tf32.predict(spectra)
        tf32.predict(spectra[:1])
    said = [r for r in caplog.records if "plain float32" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING, "once, where a user sees it"
    assert rows == float32_rows  # exact, and no precision marker: these are float32 results


def test_tf32_flags_are_switched_for_the_forward_and_restored():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    cuda = torch.device("cuda")  # only the flags are touched: no GPU is needed
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        with _precision_mode(cuda, "tf32"):
            assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with _precision_mode(cuda, "float32"):
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        with _precision_mode(torch.device("cpu"), "tf32"):  # nothing to switch on a CPU
            assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# -- bf16: bounded, nonzero, marked ------------------------------------------------------

def test_bf16_deviation_is_bounded_nonzero_and_recorded(pipe, spectra, float32_rows):
    seen = []

    def record(module, args, kwargs):
        seen.append((args[0].dtype, kwargs.get("precision"), torch.is_autocast_enabled("cpu")))

    hook = pipe.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        rows = pipe.predict(spectra, pipe.options(precision="bf16"))
    finally:
        hook.remove()
    # Noise and preprocessing reach the network in float32, outside autocast.
    assert seen == [(torch.float32, "bf16", False)]
    deviation = max_deviation(rows, float32_rows)
    assert 0 < deviation <= BF16_BOUND, deviation
    assert [r["result_flags"] for r in rows] == [r["result_flags"] for r in float32_rows]
    assert all(r["precision"] == "bf16" and all(math.isfinite(r[f]) for f in FIELDS) for r in rows)
    assert pipe.predict(spectra) == float32_rows  # bf16 left nothing behind


def test_bf16_on_the_direct_way_runs_on_cpu(pipe, spectra):
    """The direct way (the CUDA default) runs its convolutions in bfloat16 as well."""
    x = torch.linspace(-0.5, 0.5, 3900, dtype=torch.float32).reshape(1, 1, 3900)
    pipe.model.conv_impl = "direct"
    try:
        reference = pipe.predict(spectra[:1], pipe.options(draws=2))
        rows = pipe.predict(spectra[:1], pipe.options(draws=2, precision="bf16"))
        with torch.inference_mode():
            out = pipe.model(x, precision="bf16")
    finally:
        pipe.model.conv_impl = "auto"
    assert out.dtype == torch.float32 and out.shape == (1, 4)
    assert 0 < max_deviation(rows, reference) <= BF16_BOUND
    assert rows[0]["precision"] == "bf16"


def test_invalid_precision_is_a_clear_error(pipe):
    with pytest.raises(ValueError, match="precision must be one of float32, tf32, bf16, not 'fp16'"):
        BossNetPipeline(weights="/no/such/weights", precision="fp16")  # refused before loading
    with pytest.raises(ValueError, match="precision must be one of"):
        pipe.options(precision="half")
    assert pipe.defaults.precision == "float32"
    with pytest.raises(ValueError, match="precision must be one of"), torch.inference_mode():
        pipe.model(torch.zeros(1, 1, 3900), precision="bfloat16")


# -- command line, bench, result store ----------------------------------------------------

def test_cli_and_bench_take_the_precision_flag():
    from specq.cli import build_parser

    parser = build_parser()
    for name in PRECISIONS:  # the parser's choices are the network's, not a copy that may drift
        assert parser.parse_args(["bench", "--precision", name]).precision == name
    assert parser.parse_args(["run", "--precision", "bf16", "-o", "out.csv", "a.fits"]).precision == "bf16"
    assert parser.parse_args(["run", "-o", "out.csv", "a.fits"]).precision is None
    assert parser.parse_args(["bench", "--precision", "tf32"]).precision == "tf32"
    for argv in (["run", "--precision", "fp16", "-o", "o.csv"], ["bench", "--precision", "half"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def test_bench_passes_precision_to_bossnet_only_and_prints_the_deviation(monkeypatch, capsys):
    from specq import bench
    from specq.cli import build_parser

    calls = []

    def fake_run_bench(name, **kwargs):
        calls.append((name, kwargs))
        r = bench.BenchResult(name, "cpu", 2, 4, 1, 2, engine_per_s=2.0, demo_weights=True)
        if "precision" in kwargs:
            r.precision, r.float32_per_s = kwargs["precision"], 4.0
            r.precision_deviation = {f: {"max_abs": 0.01, "max_rel": 1e-5} for f in FIELDS}
        return r

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    args = build_parser().parse_args(["bench", "--pipeline", "all", "--precision", "bf16", "--no-queue"])
    assert args.func(args) == 0
    assert calls[0][1]["precision"] == "bf16" and "precision" not in calls[1][1]
    out = capsys.readouterr()
    assert "bf16 vs float32" in out.out and "bf16/float32 = 0.50x" in out.out
    assert all(f"    {f} " in out.out for f in FIELDS)
    assert "only indicative" in out.out and "astronn_dist runs in float32" in out.err


def test_bench_measures_the_deviation_in_the_same_run(tmp_path, monkeypatch):
    from workers import engine
    from specq.bench import render, run_bench

    monkeypatch.setattr(engine, "_warm", {})  # this test's model is freed after it

    r = run_bench("bossnet", n_spectra=2, draws=2, queue=False, baseline_spectra=1, workdir=tmp_path,
                  precision="bf16")
    assert r.precision == "bf16" and r.float32_per_s > 0 and r.queue_per_s is None
    assert set(r.precision_deviation) == set(FIELDS)
    assert r.precision_deviation["teff"]["max_abs"] > 0
    assert r.precision_flags_changed == 0
    assert "bf16 vs float32, same 2 spectra" in render(r)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_rows_record_precision_in_the_store_and_in_outputs(tmp_path, monkeypatch, request, backend):
    from workers import store as store_module
    from workers.export import results_table, write_results
    from workers.store import ResultStore

    def row(key, **kw):
        return dict(spectrum_key=key, path=key, hdu=1, row=0, teff=5000.0, result_flags=0, flag_warn=False,
                    flag_bad=False, model_sha256="s" * 64, demo_weights=False, **kw)

    url = (f"sqlite:///{tmp_path / 'r.sqlite'}" if backend == "sqlite"
           else request.getfixturevalue("postgres_schema_url"))
    # A table made by a specq without the column: the next store adds it, old rows read NULL.
    declared = store_module.stored_fields
    with monkeypatch.context() as m:
        m.setattr(store_module, "stored_fields", lambda s: [f for f in declared(s) if f.name != "precision"])
        ResultStore(url).write("bossnet", [row("old.fits")])
    store = ResultStore(url)
    store.write("bossnet", [row("a.fits", precision="bf16"), row("b.fits")])
    got = {r["spectrum_key"]: r["precision"] for r in store.rows("bossnet")}
    assert got == {"old.fits": None, "a.fits": "bf16", "b.fits": None}
    ResultStore(url).create()  # idempotent once the column is there

    schema = store.schemas["bossnet"]
    # Every output has the column (the same columns everywhere); float32 rows leave it empty.
    assert list(results_table(schema, [row("b.fits")])["precision"]) == [""]
    table = results_table(schema, store.rows("bossnet"))
    back = Table.read(write_results(table, tmp_path / "out.csv"))
    assert ["" if v is np.ma.masked else str(v) for v in back["precision"]] == ["", "bf16", ""]


def test_specq_run_output_records_bf16(tmp_path, monkeypatch):
    from specq.testing import synthetic
    from workers import engine
    from specq.cli import main

    monkeypatch.setattr(engine, "_warm", {})  # this test's models are freed after it
    synthetic.write_spec_lite(tmp_path / "spec-1-2-3.fits", teff=5200, logg=4.4, fe_h=-0.3, v_r=20, snr=30, seed=1)
    for precision, expected in (("bf16", ["bf16"]), ("tf32", None)):
        out = tmp_path / f"{precision}.csv"
        assert main(["run", "--draws", "2", "--seed", "1", "--quiet", "--precision", precision,
                     "-o", str(out), str(tmp_path / "spec-1-2-3.fits")]) == 0
        table = Table.read(out)
        if expected is None:  # tf32 on a CPU is float32: nothing to mark
            assert [v is np.ma.masked or v == "" for v in table["precision"]] == [True]
        else:
            assert list(table["precision"]) == expected
