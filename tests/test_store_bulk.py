"""Bulk writes (``workers.store_bulk``): whole batches in one statement, on SQLite and PostgreSQL.

The rules of the store hold for batches of any size and for writers at work together: a
failure never overwrites a result, one row per (spectrum, model), and every row is either
written or counted as a failure kept out.
"""
from __future__ import annotations

import datetime as dt
import random
import threading

import numpy as np
import pytest

from workers.store import ResultStore

BACKENDS = ["sqlite", "postgresql"]


def _row(key: str, result: bool = True, teff: float = 5000.0, sha: str = "s" * 64) -> dict:
    return dict(spectrum_key=key, path=key.split(":")[0], hdu=1, row=0, teff=teff if result else float("nan"),
                e_teff=np.float32(10.0), logg=4.0, result_flags=0 if result else 1, flag_warn=False,
                flag_bad=not result, model_sha256=sha, demo_weights=False, task_id="bulk",
                error=None if result else f"failed on {key}")


def _url(backend: str, tmp_path, postgres_schema_url) -> str:
    return f"sqlite:///{tmp_path / 'bulk.sqlite'}" if backend == "sqlite" else postgres_schema_url


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_large_batch_keeps_every_result_from_failures(backend, tmp_path, postgres_schema_url):
    store = ResultStore(_url(backend, tmp_path, postgres_schema_url))
    keys = [f"f{i}.fits:1:0" for i in range(1300)]  # more than one lookup chunk of keys
    assert store.write("bossnet", [_row(k, teff=4000.0 + i) for i, k in enumerate(keys[:700])]) == 700
    # One batch: failures over the 700 results, failures of new spectra, results of others.
    batch = ([_row(k, result=False) for k in keys[:700]] + [_row(k, result=False) for k in keys[700:1000]]
             + [_row(k, teff=1.0) for k in keys[1000:]])
    assert store.write("bossnet", batch) == 600
    assert store.failures_kept_out == 700
    rows = {r["spectrum_key"]: r for r in store.rows("bossnet")}
    assert len(rows) == 1300
    assert all(rows[k]["error"] is None and rows[k]["teff"] == 4000.0 + i for i, k in enumerate(keys[:700]))
    assert all(rows[k]["error"] == f"failed on {k}" and rows[k]["teff"] is None for k in keys[700:1000])
    assert all(rows[k]["teff"] == 1.0 for k in keys[1000:])
    # Values survive the bulk path as they are: NULL for NaN, numpy scalars, booleans, times.
    one = rows[keys[800]]
    assert one["flag_bad"] is True and one["e_teff"] == 10.0 and one["demo_weights"] is False
    created = one["created"] if one["created"].tzinfo else one["created"].replace(tzinfo=dt.timezone.utc)
    assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 600
    # Results replace failures, in bulk too; a batch twice is the same rows.
    again = [_row(k, teff=2.0) for k in keys[700:1000]]
    assert store.write("bossnet", again) == 300 and store.write("bossnet", again) == 300
    assert store.count("bossnet") == 1300
    assert {r["error"] for r in store.rows("bossnet")} == {None}


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_writers_never_let_a_failure_overwrite_a_result(backend, tmp_path, postgres_schema_url):
    url = _url(backend, tmp_path, postgres_schema_url)
    ResultStore(url).create()
    keys = [f"c{i}.fits:1:0" for i in range(200)]
    sent_results: set[str] = set()
    totals = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        store = ResultStore(url)
        rng = random.Random(seed)
        written = sent = 0
        try:
            for _ in range(12):
                batch = {k: _row(k, result=rng.random() < 0.4) for k in rng.sample(keys, 60)}
                with lock:
                    sent_results.update(k for k, r in batch.items() if r["error"] is None)
                written += store.write("bossnet", list(batch.values()))
                sent += len(batch)
        except BaseException as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)
        with lock:
            totals.append((written, store.failures_kept_out, sent))

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(totals) == 4
    assert all(written + kept == sent for written, kept, sent in totals)
    rows = ResultStore(url).rows("bossnet")
    assert len(rows) == len({r["spectrum_key"] for r in rows})  # one row per spectrum and model
    with_result = {r["spectrum_key"] for r in rows if r["error"] is None}
    # Every spectrum that was ever sent a result has one, whatever failures came after it.
    assert with_result == sent_results and len(sent_results) > 100
