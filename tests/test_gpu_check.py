"""``scripts/gpu-check.sh --device cpu``: the device script's own test, at small sizes.

It must run end to end and write one JSON file holding every measurement the GPU run
records: BossNet at each precision with peak memory, the deviation tables, and the feed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

from specq.bench.feed import FEED_FORMATS


def test_the_gpu_check_runs_on_a_cpu_and_writes_its_json(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHON": sys.executable, "SPECQ_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run([str(ROOT / "scripts" / "gpu-check.sh"), "--device", "cpu", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["device"] == "cpu" and report["machine"]["cpu_capability"]
    assert "cpu" in report["machine"]
    assert set(report["bossnet"]) == {"float32", "tf32", "bf16"}
    for precision, result in report["bossnet"].items():
        assert result["engine_per_s"] > 0 and result["peak_memory_mb"] > 0
        assert result["spectra"] == report["sizes"]["spectra"] and result["draws"] == report["sizes"]["draws"]
    bf16 = report["bossnet"]["bf16"]["deviation_from_float32"]
    assert {"teff", "logg", "fe_h"} <= set(bf16) and all(v["max_abs"] >= 0 for v in bf16.values() if v)
    assert [f["format"] for f in report["feed"]] == list(FEED_FORMATS)
    assert all(f["spectra"] > 0 and f["stages_ms"]["read"] > 0 for f in report["feed"])


def test_the_gpu_check_refuses_cuda_where_there_is_none(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the refusal cannot be seen")
    done = subprocess.run([str(ROOT / "scripts" / "gpu-check.sh"), "--out", str(tmp_path / "x.json")],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "no CUDA device" in done.stderr


def test_the_gpu_check_names_missing_packages_before_any_device_time(monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert gpu_check._missing_modules() == []  # this venv has every one
    monkeypatch.setattr(gpu_check, "_missing_modules", lambda: ["celery", "sqlalchemy"])
    assert gpu_check.main(["--device", "cuda"]) == 2
    error = capsys.readouterr().err
    assert "lacks celery, sqlalchemy" in error and "scripts/gpu-wheels.sh" in error
