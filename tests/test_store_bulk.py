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
def test_a_nul_character_in_a_text_value_is_stored_as_a_replacement_character(backend, tmp_path,
                                                                              postgres_schema_url):
    """PostgreSQL refuses text holding NUL; a header can hold one. Every store keeps the row, the same way."""
    store = ResultStore(_url(backend, tmp_path, postgres_schema_url))
    broken = dict(_row("nul.fits:1:0", result=False), error="OBJECT 'M\x0031' is not a number")
    assert store.write("bossnet", [broken, _row("fine.fits:1:0")]) == 2
    rows = {r["spectrum_key"]: r for r in store.rows("bossnet")}
    assert rows["nul.fits:1:0"]["error"] == "OBJECT 'M\ufffd31' is not a number"
    assert rows["fine.fits:1:0"]["teff"] == 5000.0
    store.dead_letter("t-nul", "bossnet", [{"path": "nul.fits"}], "header card 'A\x00'", 3)
    assert [r["reason"] for r in store.dead_letter_rows()] == ["header card 'A\ufffd'"]


def _write_together(url: str, make_batch, rounds: int, writers: int = 4) -> list[dict]:
    """Writers at work together, each with its own store, each writing ``rounds`` batches ``make_batch(rng)``.

    Returns every batch (key → row) sent. Fails when a writer raises, or when a writer's
    rows are not all either written or counted as failures kept out.
    """
    sent: list[dict] = []
    totals = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        store = ResultStore(url)
        rng = random.Random(seed)
        written = count = 0
        try:
            for _ in range(rounds):
                batch = make_batch(rng)
                with lock:
                    sent.append(batch)
                written += store.write("bossnet", list(batch.values()))
                count += len(batch)
        except BaseException as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)
        with lock:
            totals.append((written, store.failures_kept_out, count))

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(totals) == writers
    assert all(written + kept == count for written, kept, count in totals)
    return sent


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_writers_never_let_a_failure_overwrite_a_result(backend, tmp_path, postgres_schema_url):
    url = _url(backend, tmp_path, postgres_schema_url)
    ResultStore(url).create()
    keys = [f"c{i}.fits:1:0" for i in range(200)]
    sent = _write_together(url, lambda rng: {k: _row(k, result=rng.random() < 0.4) for k in rng.sample(keys, 60)},
                           rounds=12)
    sent_results = {k for batch in sent for k, r in batch.items() if r["error"] is None}
    rows = ResultStore(url).rows("bossnet")
    assert len(rows) == len({r["spectrum_key"] for r in rows})  # one row per spectrum and model
    with_result = {r["spectrum_key"] for r in rows if r["error"] is None}
    # Every spectrum that was ever sent a result has one, whatever failures came after it.
    assert with_result == sent_results and len(sent_results) > 100


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_writers_settle_file_failures_and_the_ledger(backend, tmp_path, postgres_schema_url):
    """Writers sharing files: every result kept, the file failures it settles gone, every reference settled."""
    from workers import ledger
    from workers.pipeline import UNLOADED_MODEL_SHA

    url = _url(backend, tmp_path, postgres_schema_url)
    files = [f"d{i}.fits" for i in range(24)]
    spectra = [f"{f}:{hdu}:0" for f in files for hdu in (1, 2, 3)]

    def file_failure(path: str, sha: str = "s" * 64) -> dict:
        return dict(_row(f"{path}:*:*", result=False, sha=sha), hdu=None, row=None)

    recorder = ResultStore(url)
    # Every file failed first (unreadable), with the model, and for some with no model loaded.
    first = [file_failure(f) for f in files] + [file_failure(f, UNLOADED_MODEL_SHA) for f in files[::3]]
    assert recorder.write("bossnet", first) == len(first)
    ledger.record(recorder, "bossnet", [{"path": f} for f in files[:12]], "whole-files")  # listed by the worker
    ledger.record(recorder, "bossnet", [{"path": k.split(":")[0], "hdu": int(k.split(":")[1]), "row": 0}
                                        for k in spectra], "spectra")

    def batch(rng: random.Random) -> dict:
        rows = {k: _row(k, result=rng.random() < 0.5) for k in rng.sample(spectra, 30)}
        other = file_failure(rng.choice(files), "t" * 64)  # another model's: no result of "s" settles it
        return {**rows, other["spectrum_key"]: other}

    sent = _write_together(url, batch, rounds=8)
    sent_keys = {k for b in sent for k in b}
    sent_results = {k for b in sent for k, r in b.items() if r["error"] is None}
    rows = [(r["spectrum_key"], r["model_sha256"], r["error"]) for r in ResultStore(url).rows("bossnet")]
    assert {k for k, _, error in rows if error is None} == sent_results and len(sent_results) > 20
    # The file failures left: of model "s" and model-less ones, those of files without a result only.
    with_result = {k.split(":")[0] for k in sent_results}
    assert {k.split(":")[0] for k, sha, _ in rows if k.endswith(":*:*") and sha == "s" * 64} == set(files) - with_result
    assert ({k.split(":")[0] for k, sha, _ in rows if sha == UNLOADED_MODEL_SHA}
            == set(files[::3]) - with_result)
    assert {k for k, sha, _ in rows if sha == "t" * 64} == {k for k in sent_keys if k.endswith(":*:*")}
    # Every reference a row named is settled; so is a whole file any row named.
    named_files = {k.split(":")[0] for k in sent_keys}
    left = {u.spectrum_key for u in ledger.unfinished(recorder)}
    assert left == ({k for k in spectra if k not in sent_keys}
                    | {f"{f}:*:*" for f in files[:12] if f not in named_files})


def test_the_staging_table_holds_one_batch_and_survives_a_failed_write(postgres_schema_url):
    from workers import ledger

    store = ResultStore(postgres_schema_url)
    assert store.write("bossnet", [_row(f"a{i}.fits:1:0", teff=1.0 + i) for i in range(5)]) == 5
    ledger.record(store, "bossnet", [{"path": "a0.fits", "hdu": 1, "row": 0}], "sent-again")
    broken = [_row("b0.fits:1:0"), dict(_row("b1.fits:1:0"), teff="not a number")]
    with pytest.raises(Exception, match="not a number"):
        store.write("bossnet", broken)  # refused by the database: nothing of it stays
    # The same connection: a batch writes its own rows only, none of an earlier batch's.
    assert store.write("bossnet", [dict(_row("c0.fits:1:0"), task_id="last")]) == 1
    rows = {r["spectrum_key"]: r for r in store.rows("bossnet")}
    assert sorted(rows) == [*(f"a{i}.fits:1:0" for i in range(5)), "c0.fits:1:0"]
    assert [rows[f"a{i}.fits:1:0"]["teff"] for i in range(5)] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert {r["task_id"] for r in rows.values()} == {"bulk", "last"} and rows["c0.fits:1:0"]["task_id"] == "last"
    assert [u.spectrum_key for u in ledger.unfinished(store)] == ["a0.fits:1:0"]  # no later batch settled it
    fresh = ResultStore(postgres_schema_url)  # another connection: its own staging table, the same rules
    assert fresh.write("bossnet", [_row("a0.fits:1:0", result=False)]) == 0 and fresh.failures_kept_out == 1


def test_a_connection_whose_first_write_failed_makes_its_staging_table_again(postgres_schema_url):
    store = ResultStore(postgres_schema_url)
    with store.engine.connect() as conn:  # the connection the writes below are given back
        backend = conn.connection.driver_connection.info.backend_pid
    with pytest.raises(Exception, match="not a number"):  # its staging table is made in this write, then undone
        store.write("bossnet", [_row("a0.fits:1:0"), dict(_row("a1.fits:1:0"), teff="not a number")])
    assert store.write("bossnet", [_row("b0.fits:1:0", teff=2.0)]) == 1
    assert store.write("bossnet", [_row("b0.fits:1:0", result=False), _row("b1.fits:1:0")]) == 1
    with store.engine.connect() as conn:
        assert conn.connection.driver_connection.info.backend_pid == backend
    assert {r["spectrum_key"]: r["teff"] for r in store.rows("bossnet")} == {"b0.fits:1:0": 2.0, "b1.fits:1:0": 5000.0}
    assert store.failures_kept_out == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_without_failures_counts_every_row_but_placeholders_kept_back(backend, tmp_path, postgres_schema_url):
    from workers.pipeline import UNLOADED_MODEL_SHA

    store = ResultStore(_url(backend, tmp_path, postgres_schema_url))
    assert store.write("bossnet", [_row("a.fits:1:0", result=False), _row("b.fits:1:0", teff=1.0)]) == 2
    # Results only: over a failure, over a result, new; and a placeholder of a spectrum that has a result.
    batch = [_row("a.fits:1:0", teff=2.0), _row("b.fits:1:0", teff=3.0), _row("c.fits:1:0", teff=4.0),
             _row("b.fits:1:0", teff=9.0, sha=UNLOADED_MODEL_SHA)]
    assert store.write("bossnet", batch) == 3 and store.failures_kept_out == 0
    rows = {(r["spectrum_key"], r["model_sha256"]): r for r in store.rows("bossnet")}
    assert {k: (r["teff"], r["error"]) for k, r in rows.items()} == {
        ("a.fits:1:0", "s" * 64): (2.0, None), ("b.fits:1:0", "s" * 64): (3.0, None),
        ("c.fits:1:0", "s" * 64): (4.0, None)}


def test_the_commit_without_a_wal_flush_is_chosen_in_the_database_url(postgres_schema_url):
    import sqlalchemy as sa

    assert "options=" in postgres_schema_url  # one more server option beside the test's schema
    store = ResultStore(f"{postgres_schema_url}%20-csynchronous_commit%3Doff")
    assert store.write("bossnet", [_row("a.fits:1:0"), _row("b.fits:1:0", result=False)]) == 2
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar() == "off"
    assert [r["spectrum_key"] for r in store.rows("bossnet")] == ["a.fits:1:0", "b.fits:1:0"]
    with ResultStore(postgres_schema_url).engine.connect() as conn:  # the default: every commit flushed
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar() == "on"
