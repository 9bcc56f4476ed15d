"""BossNet's sources through everything after the readers: ``specq watch``, a real worker, ``specq status``,
the exports, the summary, the plots, the Python API and ``specq demo``.

One worker session serves the module: a folder holding one file of each source (an apStar, a LAMOST DR7
and a DR8 file, a Gaia RVS and a Gaia XP table of two stars each) is sent by ``specq watch`` through
Redis to one worker, and every test reads what it wrote. Demo weights serve every pipeline.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from conftest import ROOT, WorkerProcess, wait_for, worker_env

pytestmark = pytest.mark.integration

SOURCES = ("bossnet_apogee", "bossnet_lamost", "bossnet_gaia_rvs", "bossnet_gaia_xp")
# The summary file's table beside BOSS and APOGEE that holds each source's rows (None: APOGEE's own).
SOURCE_HDU = {"bossnet_apogee": None, "bossnet_lamost": "LAMOST", "bossnet_gaia_rvs": "GAIA_RVS",
              "bossnet_gaia_xp": "GAIA_XP"}
DRAWS, SEED = 3, 2


def _specq(env, *args, cwd=None):
    out = subprocess.run([sys.executable, "-m", "specq.cli", *map(str, args)], env=env, cwd=cwd or ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _source_ids(data, pipeline: str) -> list[int]:
    """The ``source_id`` column of the source's Gaia table, sorted."""
    from astropy.table import Table

    (table,) = (data / "gaia").glob(("RVS" if pipeline == "bossnet_gaia_rvs" else "XP_CONTINUOUS") + "-*.ecsv")
    return sorted(int(i) for i in Table.read(table, format="ascii.ecsv")["source_id"])


def _by_place(rows) -> dict:
    """Rows (dicts or table rows) keyed by (path, hdu, row)."""
    return {(str(r["path"]), int(r["hdu"]), int(r["row"])): r for r in rows}


def _write_sources(data) -> dict[str, int]:
    """One file of each source under ``data``; the spectra each pipeline takes from them."""
    from specq.testing.surveys import write_source_files
    from specq.testing.synthetic import write_apstar

    data.mkdir(parents=True)
    write_apstar(data / "apStar-1.0-apo25m-2M00000001+0000001.fits", teff=4700, logg=2.4, fe_h=-0.3, fakemag=40.0,
                 snr=80, seed=4, nvisits=3, apogee_id="2M00000001+0000001", k_mag=9.0, ebv=0.05)
    for instrument in ("lamost", "gaia_rvs", "gaia_xp"):
        write_source_files(data, instrument, 2, seed=3)  # LAMOST: a DR7 and a DR8 file; Gaia: a table of two
    # The apStar's three visits are not taken: BossNet on APOGEE reads the combined spectrum.
    return {"bossnet_apogee": 1, "bossnet_lamost": 2, "bossnet_gaia_rvs": 2, "bossnet_gaia_xp": 2}


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_url):
    """A worker on Redis that has processed what ``specq watch`` sent of each source; it stays up for the module."""
    import redis

    from workers.store import ResultStore

    tmp = tmp_path_factory.mktemp("sources-queue")
    data = tmp / "data"
    expected = _write_sources(data)
    redis.Redis.from_url(redis_url).flushdb()
    with pytest.MonkeyPatch.context() as mp:
        # The session's demo-weights cache (conftest.isolated_env, which runs per test, names the same folder).
        mp.setenv("SPECQ_WEIGHTS_DIR", str(tmp_path_factory.getbasetemp() / "weights-cache"))
        env = worker_env(tmp, data, f"sqlite:///{tmp / 'results.sqlite'}", redis_url)
    worker = WorkerProcess(env, "gpu", tmp / "worker.log", name="sources")
    try:
        watched = _specq(env, "watch", data, "--pipeline", ",".join(SOURCES), "--draws", DRAWS, "--seed", SEED,
                         "--settle", "0", "--poll-interval", "0.2", "--poll-only", "--max-seconds", "3")
        store = ResultStore(env["SPECQ_DATABASE_URL"])
        wait_for(lambda: all(p in store.tables and store.count(p) >= n for p, n in expected.items()), 300,
                 what="every source's rows", on_fail=lambda: worker.log_text()[-3000:])
        yield {"env": env, "data": data, "store": store, "expected": expected, "watch": watched.stderr,
               "tmp": tmp, "worker": worker}
    finally:
        worker.stop()
        redis.Redis.from_url(redis_url).flushdb()


@pytest.fixture
def in_process(served, monkeypatch):
    """This process's settings are the worker's: ``specq.cli.main`` and the Python API read its store."""
    for key, value in served["env"].items():
        if key.startswith("SPECQ_"):
            monkeypatch.setenv(key, value)
    return served


@pytest.mark.parametrize("pipeline", SOURCES)
def test_watch_sends_each_source_to_a_real_worker(served, pipeline):
    rows = served["store"].rows(pipeline)
    assert len(rows) == served["expected"][pipeline]
    for row in rows:
        assert not row["error"], row["error"]
        assert row["demo_weights"] and row["task_id"] and row["draws"] == DRAWS
        assert np.isfinite(row["teff"]) and row["e_logg"] > 0
    if pipeline.startswith("bossnet_gaia"):
        assert sorted(r["gaia_dr3_source_id"] for r in rows) == _source_ids(served["data"], pipeline)
    if pipeline == "bossnet_lamost":
        assert sorted(r["hdu"] for r in rows) == [0, 1]  # DR7 in HDU 0, DR8 in HDU 1
    assert "5 file(s) sent, 7 spectra" in served["watch"], served["watch"]


@pytest.mark.parametrize("pipeline", SOURCES)
def test_export_puts_each_source_in_its_own_table_of_the_summary_layout(in_process, pipeline, tmp_path):
    from specq.cli import main
    from workers import registry
    from workers.export import read_results

    n = in_process["expected"][pipeline]
    for suffix in ("fits", "parquet"):
        assert main(["results", "export", "--pipeline", pipeline, "-o", str(tmp_path / f"r.{suffix}")]) == 0
    extra = SOURCE_HDU[pipeline]
    holds = extra or "APOGEE"
    with fits.open(tmp_path / "r.fits") as hdul:
        names = [h.name for h in hdul]
        assert names == ["PRIMARY", "BOSS", "APOGEE"] + ([extra] if extra else [])
        assert {h.name: len(h.data) for h in hdul[1:]} == {name: n if name == holds else 0 for name in names[1:]}
        primary = hdul[0].header
        assert primary["PIPELINE"] == registry.get(pipeline).schema.product and primary["DEMO"] is True
        assert list(primary["COMMENT"])[-len(names) + 1:] == [f"HDU {i}: {name} spectra"
                                                              for i, name in enumerate(names[1:], 1)]
        assert hdul[holds].header["INSTRMNT"] == holds
        assert all(h.columns.names == hdul[holds].columns.names for h in hdul[1:])
    stored = _by_place(in_process["store"].rows(pipeline))
    for path in ("r.fits", "r.parquet"):
        table = read_results(tmp_path / path)
        assert table.meta["specq_pipeline"] == pipeline, path
        got = _by_place(table)
        assert set(got) == set(stored), path
        for key, row in stored.items():
            for name in ("teff", "logg", "fe_h", "e_teff", "e_logg", "e_fe_h"):
                assert float(got[key][name]) == pytest.approx(row[name], rel=1e-6), (path, key, name)
            if pipeline.startswith("bossnet_gaia"):
                assert int(got[key]["gaia_dr3_source_id"]) == row["gaia_dr3_source_id"], (path, key)


@pytest.mark.parametrize("pipeline", SOURCES)
def test_a_csv_export_is_never_taken_for_another_pipelines(in_process, pipeline, tmp_path, capsys):
    from specq.cli import main
    from workers.export import pipelines_of_columns, read_results

    csv = tmp_path / "r.csv"
    assert main(["results", "export", "--pipeline", pipeline, "-o", str(csv)]) == 0
    table = read_results(csv)
    assert len(table) == in_process["expected"][pipeline]
    # A CSV names no pipeline, and these columns are also BossNet's on BOSS (LAMOST) or on another source.
    fitting = pipelines_of_columns(table.colnames)
    assert pipeline in fitting and len(fitting) > 1 and "specq_pipeline" not in table.meta
    capsys.readouterr()
    assert main(["results", "plot", "-i", str(csv), "-o", str(tmp_path / "plots")]) == 2
    err = capsys.readouterr().err
    assert pipeline in err and "give --pipeline" in err and len(err.strip().splitlines()) == 1, err
    assert main(["results", "plot", "-i", str(csv), "--pipeline", pipeline, "-o", str(tmp_path / "plots")]) == 0
    assert {p.name.split("-")[0] for p in (tmp_path / "plots").iterdir()} == {pipeline}


def test_summary_plots_and_status_name_every_source(in_process, tmp_path, capsys):
    import re

    from specq.cli import main
    from workers import registry

    expected = in_process["expected"]
    assert main(["results", "summary"]) == 0
    summary = capsys.readouterr().out
    for pipeline, n in expected.items():
        assert f"{pipeline}: {n} rows ({n} in the last hour, {n} in the last 24 h)" in summary, summary
    assert summary.count("[DEMO WEIGHTS]") == len(SOURCES)

    assert main(["results", "plot", "-o", str(tmp_path / "plots")]) == 0
    drawn = {p.name for p in (tmp_path / "plots").iterdir()}
    assert drawn == {f"{p}-{name}.png" for p in SOURCES for name, _ in registry.get(p).load_plots()}
    assert {"bossnet_lamost-v_r.png", "bossnet_gaia_xp-kiel.png"} <= drawn  # v_r where the model gives it
    assert all((tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG" for name in drawn)

    status = _specq(in_process["env"], "status").stdout
    assert "workers: 1 live" in status and "sent, not finished: 0" in status, status
    lines = [line for line in status.splitlines() if line.startswith("results ")]
    for pipeline, n in expected.items():
        assert any(re.match(rf"results {pipeline} +{n} rows ", line) for line in lines), status
    assert len({line.index(" rows ") for line in lines}) == 1, status  # one column, however long the name


def test_the_python_api_reads_and_predicts_every_source(in_process):
    import specq

    stored = {p: specq.results(p) for p in SOURCES}
    for pipeline, table in stored.items():
        assert len(table) == in_process["expected"][pipeline] and table.meta["specq_pipeline"] == pipeline
        assert table["demo_weights"].all() and (table["draws"] == DRAWS).all()
    # The same files in this process, with the watch's draws and seed: the worker's numbers, its errors included
    # (a spectrum's draws depend on its seed and place, not on the batch).
    predicted = specq.predict(in_process["data"], ",".join(SOURCES), draws=DRAWS, seed=SEED, demo_weights=True)
    assert set(predicted["pipeline"]) == set(SOURCES)
    for pipeline in SOURCES:
        mine = _by_place(predicted[predicted["pipeline"] == pipeline])
        theirs = _by_place(stored[pipeline])
        assert set(mine) == set(theirs), pipeline
        for key, row in theirs.items():
            for name in ("teff", "logg", "fe_h", "e_teff", "e_logg", "e_fe_h"):
                assert float(mine[key][name]) == pytest.approx(float(row[name]), rel=1e-5), (pipeline, key, name)


def test_a_demo_of_the_other_sources_runs_on_their_demo_weights(tmp_path):
    import os

    env = worker_env(tmp_path, tmp_path, f"sqlite:///{tmp_path / 'unused.sqlite'}", SPECQ_CONFIG=os.devnull)
    done = _specq(env, "demo", "--pipeline", ",".join(SOURCES), "--spectra", "3")
    out, demo = done.stdout, tmp_path / "state" / "demo"
    assert "1 APOGEE synthetic spectra, 4 of each of gaia_rvs, gaia_xp, lamost," in out, out
    # --spectra 3: one APOGEE spectrum (a third); LAMOST and Gaia: four spectra each.
    for pipeline, n in {"bossnet_apogee": 1, "bossnet_lamost": 4, "bossnet_gaia_rvs": 4, "bossnet_gaia_xp": 4}.items():
        assert f"{pipeline}: {n} rows (0 flagged bad) → {demo / pipeline}.fits" in out, out
        with fits.open(demo / f"{pipeline}.fits") as hdul:
            assert len(hdul[SOURCE_HDU[pipeline] or "APOGEE"].data) == n and hdul[0].header["DEMO"] is True
        assert list((demo / "plots").glob(f"{pipeline}-kiel.png")), pipeline
    assert "DEMO WEIGHTS" in done.stderr and "bossnet:" not in out and "astronn_dist:" not in out
