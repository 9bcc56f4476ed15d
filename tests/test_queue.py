"""End to end through real Celery worker processes: embedded broker and the real Redis."""
from __future__ import annotations

import os

import pytest

from conftest import producer_app, wait_for, worker_env

pytestmark = pytest.mark.integration




def _dataset(root):
    from specq.testing.synthetic import make_dataset

    truth = make_dataset(root, n_boss=3, n_apogee=1, seed=3)
    (root / "spec-broken.fits").write_bytes(b"SIMPLE  =                    T" + os.urandom(3000))
    return truth


@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_worker_processes_files_and_flags_a_broken_one(tmp_path, monkeypatch, start_worker, broker, request):
    broker_url = request.getfixturevalue("clean_redis") if broker == "redis" else None
    root = tmp_path / "data"
    root.mkdir()
    truth = _dataset(root)
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'results.sqlite'}", broker_url)
    worker = start_worker(env, queues="gpu,cpu")
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    files = sorted(set(truth["path"])) + ["spec-broken.fits"]
    sub = submit(files, "bossnet,astronn_dist", options={"draws": 2, "seed": 1}, chunk_size=2, settings=settings)
    store = ResultStore(settings.database)
    expected = sub.n_spectra
    assert expected == len(truth) + 1
    wait_for(lambda: store.count() >= expected, 240, what=f"{expected} rows",
             on_fail=lambda: worker.log_text()[-4000:])
    assert worker.proc.poll() is None, "the worker must survive a broken file"
    boss = {r["spectrum_key"]: r for r in store.rows("bossnet")}
    dist = {r["spectrum_key"]: r for r in store.rows("astronn_dist")}
    assert len(boss) + len(dist) == expected
    broken = boss["spec-broken.fits:*:*"]
    assert broken["result_flags"] & 1 and broken["flag_bad"] and broken["error"]
    good = [r for k, r in boss.items() if k != "spec-broken.fits:*:*"]
    assert good and all(r["teff"] is not None and r["teff"] > 0 for r in good)
    assert all(r["demo_weights"] and len(r["model_sha256"]) == 64 and r["task_id"] for r in good)
    assert all(r["L_fakemag"] is not None for r in dist.values())
