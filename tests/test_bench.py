"""``specq bench`` for AstroNN distances: the floor line (the most any exact engine could do here)."""
from __future__ import annotations

import json

import pytest


def test_astronn_bench_measures_a_floor_in_the_same_run(tmp_path, monkeypatch):
    from workers import engine
    from workers.astronn_dist.network import ApogeeDistBCNN
    from workers.bench import render, run_bench

    monkeypatch.setattr(engine, "_warm", {})  # this test's model is freed after it

    r = run_bench("astronn_dist", n_spectra=2, draws=3, queue=False, workdir=tmp_path)
    assert r.baseline_per_s > 0 and r.engine_per_s > 0
    assert r.matmul_gflops > 0
    # the floor charges every multiply-add at the measured rate, and nothing else
    flops = sum(ApogeeDistBCNN().float_ops(3).values())
    assert r.floor_per_s == pytest.approx(r.matmul_gflops * 1e9 / flops)
    assert r.ceiling == pytest.approx(r.floor_per_s / r.baseline_per_s)
    text = render(r)
    assert "floor" in text and f"ceiling = {r.ceiling:.2f}x" in text


def test_bench_repeats_every_measurement_and_keeps_the_best(tmp_path, monkeypatch):
    # a real queue run (Redis, one worker process), two rounds over the same references
    from workers import engine
    from workers.bench import DEFAULT_REDIS, render, run_bench

    monkeypatch.setattr(engine, "_warm", {})
    calls = []
    real_process = engine.process
    monkeypatch.setattr(engine, "process", lambda *a, **k: calls.append(len(a[1])) or real_process(*a, **k))

    r = run_bench("bossnet", n_spectra=3, draws=2, baseline_spectra=1, workdir=tmp_path, repeat=2,
                  broker_url=DEFAULT_REDIS)
    assert calls == [2, 3, 3]  # the warm-up, then the engine once a round
    assert r.repeat == 2 and r.queue_per_s > 0 and r.queue_broker == DEFAULT_REDIS
    assert "best of 2 runs each" in render(r)
    with pytest.raises(ValueError, match="repeat"):
        run_bench("bossnet", n_spectra=1, repeat=0, workdir=tmp_path / "zero")


def test_bossnet_bench_has_no_floor_line():
    from workers.bench import BenchResult, render

    r = BenchResult("bossnet", "cpu", 20, 4, 4, 2, baseline_per_s=1.0, engine_per_s=3.0)
    assert r.ceiling is None and "floor" not in render(r)


def test_bench_json_carries_the_ceiling(tmp_path, monkeypatch, capsys):
    from workers import bench
    from workers.cli import build_parser

    def fake_run_bench(name, **kwargs):
        return bench.BenchResult(name, "cpu", 100, 4, 4, 2, baseline_per_s=2.0, engine_per_s=10.0,
                                 floor_per_s=30.0, matmul_gflops=40.0)

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    out = tmp_path / "bench.json"
    args = build_parser().parse_args(["bench", "--pipeline", "astronn_dist", "--no-queue", "--json", str(out)])
    assert args.func(args) == 0
    (saved,) = json.loads(out.read_text())
    assert saved["ceiling"] == pytest.approx(15.0) and saved["speedup"] == pytest.approx(5.0)
    assert "ceiling = 15.00x, engine at 33% of it" in capsys.readouterr().out

