"""``specq bench --remote``: what each round reads and fetches (the figures themselves are not asserted)."""
from __future__ import annotations

import json

import pytest

import fsspec  # noqa: F401  (a test dependency: missing, it fails)
import aiohttp  # noqa: F401  (a test dependency: missing, it fails)


def test_remote_bench_reads_cold_warm_and_by_ranges(tmp_path, capsys):
    from specq.bench.remote import render, run_remote_bench
    from specq.cli import main

    r = run_remote_bench(n_spectra=5, repeat=2, workdir=tmp_path)
    assert r.n_spectra == 5 and r.n_files >= 2 and r.repeat == 2
    assert r.cold_gets == r.n_files, "a cold cache fetches every file once"
    assert r.warm_gets == 0, "a warm cache fetches nothing"
    assert 0 < r.ranged_megabytes <= r.megabytes * 1.01
    assert min(r.local_per_s, r.cold_per_s, r.warm_per_s, r.ranged_per_s) > 0
    text = render(r)
    assert "cold cache" in text and "warm cache" in text and "local folder" in text

    out = tmp_path / "bench.json"
    assert main(["bench", "--remote", "--spectra", "3", "--json", str(out)]) == 0
    assert "HTTP root, warm cache" in capsys.readouterr().out
    assert json.loads(out.read_text())["warm_gets"] == 0
