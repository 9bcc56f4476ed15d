"""A real Celery worker whose data root is a URL served by a real HTTP server."""
from __future__ import annotations

import math

import pytest

import fsspec  # noqa: F401  (a test dependency: missing, it fails)
import aiohttp  # noqa: F401  (a test dependency: missing, it fails)

from conftest import producer_app, wait_for, worker_env  # noqa: E402
from specq.testing.http_server import ArchiveServer  # noqa: E402

pytestmark = pytest.mark.integration

COMPARED = ("teff", "e_teff", "logg", "fe_h", "bn_v_r")


def test_a_worker_with_a_url_root_matches_specq_run_flags_404_and_retries_503(tmp_path, monkeypatch, start_worker,
                                                                              clean_redis):
    from specq.cli import main
    from specq.testing.synthetic import make_dataset
    from tasks.producer import submit
    from workers.export import read_results
    from workers.store import ResultStore

    folder = tmp_path / "archive"
    truth = make_dataset(folder, n_boss=4, n_apogee=0, seed=11, formats=("spec-lite", "mwmVisit"))
    files = sorted({str(p) for p in truth["path"]})
    flaky = files[0]
    with ArchiveServer(folder) as server:
        env = worker_env(tmp_path, folder, f"sqlite:///{tmp_path / 'results.sqlite'}", clean_redis,
                         SPECQ_DATA_ROOT=server.url + "/", SPECQ_RETRY_BACKOFF="0.2",
                         SPECQ_CACHE_DIR=tmp_path / "cache")
        worker = start_worker(env, queues="gpu")
        app, settings = producer_app(env, monkeypatch)
        server.fail(flaky, 503, 503)  # the first attempt finds the archive unavailable
        options = {"draws": 3, "seed": 7}
        sub = submit([*files, "boss/spec-9-9-9.fits"], "bossnet", options=options, settings=settings)
        store = ResultStore(settings.database)
        wait_for(lambda: store.count("bossnet") >= sub.n_spectra and _all_have_rows(store, files), 240,
                 what="a row for every spectrum", on_fail=lambda: worker.log_text()[-4000:])
        rows = {r["spectrum_key"]: r for r in store.rows("bossnet")}

        missing = rows.pop("boss/spec-9-9-9.fits:*:*")
        assert missing["flag_bad"] and missing["error"] == f"{server.url}/boss/spec-9-9-9.fits: HTTP 404 Not Found"
        assert not any(r["error"] for r in rows.values()), "a 503 then 200 leaves no failure row"
        assert [k for k in rows if k.startswith(flaky)] == [f"{flaky}:1:0"]
        assert "HTTP 503" in worker.log_text() and "retry" in worker.log_text().lower()

        # Second pass: every file is in the cache (HEADs only, no GET).
        gets = server.count("GET")
        first_tasks = {r["task_id"] for r in rows.values()}
        again = submit(files, "bossnet", options=options, settings=settings)
        wait_for(lambda: _task_ids(store, rows).isdisjoint(first_tasks), 240, what="the second pass's rows",
                 on_fail=lambda: worker.log_text()[-4000:])
        assert again.n_spectra == len(files)  # file references: the workers list each file's spectra
        assert server.count("GET") == gets, "the second pass reads from the cache"

    # The same numbers as `specq run` on the local files.
    monkeypatch.setenv("SPECQ_DATA_ROOT", str(folder))
    out = tmp_path / "local.csv"
    assert main(["run", "--pipeline", "bossnet", "--draws", "3", "--seed", "7", "--quiet", "-o", str(out),
                 *[str(folder / f) for f in files]]) == 0
    local = {f"{r['path']}:{r['hdu']}:{r['row']}": r for r in read_results(out)}
    assert set(local) == set(rows)
    final = {r["spectrum_key"]: r for r in ResultStore(settings.database).rows("bossnet")}
    for key, row in local.items():
        for name in COMPARED:
            assert math.isclose(float(final[key][name]), float(row[name]), rel_tol=1e-6), (key, name)


def _all_have_rows(store, files) -> bool:
    keys = {r["spectrum_key"] for r in store.rows("bossnet")}
    return all(any(k.startswith(f + ":") and not k.endswith(":*:*") for k in keys) for f in files)


def _task_ids(store, keys) -> set:
    return {r["task_id"] for r in store.rows("bossnet") if r["spectrum_key"] in keys}
