"""A file that failed and is later read whole leaves only its result, through a real worker."""
from __future__ import annotations

import os

import pytest

from conftest import producer_app, wait_for, worker_env

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_garbage_then_good_and_half_written_then_whole(tmp_path, monkeypatch, start_worker, request, backend):
    from specq.testing.synthetic import make_dataset

    root = tmp_path / "data"
    truth = make_dataset(root, n_boss=2, n_apogee=0, seed=5, formats=("mwmStar",))
    files = sorted(set(truth["path"]))
    assert len(files) == 2
    garbage, half = (root / f for f in files)
    whole = {p: p.read_bytes() for p in (garbage, half)}
    garbage.write_bytes(b"SIMPLE  =                    T" + os.urandom(5000))
    half.write_bytes(whole[half][:len(whole[half]) // 2])  # read while still being written

    url = (f"sqlite:///{tmp_path / 'results.sqlite'}" if backend == "sqlite"
           else request.getfixturevalue("postgres_schema_url"))
    env = worker_env(tmp_path, root, url)
    worker = start_worker(env, queues="gpu,cpu")
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    store = ResultStore(settings.database)
    submit(files, "bossnet", options={"draws": 2, "seed": 1}, settings=settings)
    wait_for(lambda: store.count("bossnet") >= 2, 240, what="two failure rows",
             on_fail=lambda: worker.log_text()[-4000:])
    failed = {r["spectrum_key"]: r for r in store.rows("bossnet")}
    assert set(failed) == {f"{f}:*:*" for f in files}, failed
    assert all(r["error"] and r["flag_bad"] for r in failed.values())

    for path, data in whole.items():  # the files arrive whole
        path.write_bytes(data)
    submit(files, "bossnet", options={"draws": 2, "seed": 1}, settings=settings)

    def only_results():
        rows = store.rows("bossnet")
        return len(rows) == len(truth) and all(r["error"] is None for r in rows)

    wait_for(only_results, 240, what="the results, and no failure left",
             on_fail=lambda: f"{store.rows('bossnet')}\n{worker.log_text()[-4000:]}")
    rows = store.rows("bossnet")
    assert sorted(r["path"] for r in rows) == files and all(r["teff"] > 0 for r in rows)
    assert store.rows("bossnet", bad=True) == []
    assert store.summary()["bossnet"]["errors"] == []
