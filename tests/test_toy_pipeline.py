"""A pipeline defined only under tests/ runs end to end: nothing outside tests/ names it.

``tests/plugins/toy_pipeline.py`` declares a pipeline (a tiny numpy model with its own
schema); ``SPECQ_PLUGINS`` registers it. This test drives it through ``specq schema``,
``specq run``, a real worker on the embedded broker, the store and ``specq results export``.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, wait_for, worker_env

pytestmark = pytest.mark.integration
PLUGINS = ROOT / "tests" / "plugins"


def _env(tmp_path, data_root, weights):
    env = worker_env(tmp_path, data_root, f"sqlite:///{tmp_path / 'results.sqlite'}",
                     SPECQ_PLUGINS="toy_pipeline", SPECQ_WEIGHTS_DIR=weights)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(PLUGINS)])
    return env


def _specq(env, *args, cwd=None):
    out = subprocess.run([sys.executable, "-m", "specq.cli", *map(str, args)], env=env, cwd=cwd or ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture
def toy_registered(monkeypatch):
    """The toy registered in this process too (the store's tables), and forgotten afterwards."""
    from workers import registry

    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    monkeypatch.setattr(registry, "_loaded_modules", set(registry._loaded_modules))
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv("SPECQ_PLUGINS", "toy_pipeline")
    assert "toy" in registry.names()


@pytest.fixture
def toy_setup(tmp_path, toy_registered):
    from specq.testing.synthetic import write_spec_lite

    data = tmp_path / "data"
    (data / "boss").mkdir(parents=True)
    files = []
    for i in range(3):
        path = data / "boss" / f"spec-toy-{i}.fits"
        write_spec_lite(path, teff=5000 + 500 * i, logg=4.0, fe_h=-0.2, v_r=10.0, snr=20 + 10 * i, seed=i)
        files.append(path)
    weights = tmp_path / "weights"
    weights.mkdir()
    np.save(weights / "toy.npy", np.array([0.5, -1.5]))
    return _env(tmp_path, data, weights), data, files


def test_toy_pipeline_runs_everywhere_from_its_declaration_alone(tmp_path, toy_setup, start_worker):
    env, data, files = toy_setup

    schema = _specq(env, "schema").stdout
    assert "### `toy`" in schema and "`e_score`" in schema and "`flag_low_snr`" in schema
    assert "### `bossnet`" in schema  # the built-in pipelines are still there

    # In-process.
    out_csv = tmp_path / "toy.csv"
    _specq(env, "run", "--pipeline", "toy", "--seed", "3", "-o", out_csv, *files, cwd=data)
    from astropy.table import Table

    run = Table.read(out_csv)
    assert len(run) == 3 and np.all(np.isfinite(run["score"])) and np.all(run["e_score"] > 0)
    assert np.all(np.abs(run["score"]) < 1) and [str(v) for v in run["flag_bad"]] == ["False"] * 3

    # Through the queue: a real worker on the embedded broker, consuming the toy's own queue.
    worker = start_worker(env, queues="toyq")
    sent = _specq(env, "enqueue", "--pipeline", "toy", "--seed", "3", *files, cwd=data)
    assert "toy: 3 spectra in 2 messages" in sent.stdout  # chunk_size 2, from the spec

    from workers.store import ResultStore

    store = ResultStore(env["SPECQ_DATABASE_URL"])
    wait_for(lambda: store.count("toy") >= 3, 120, what="3 toy rows", on_fail=lambda: worker.log_text()[-3000:])
    rows = {r["path"]: r for r in store.rows("toy")}
    assert len(rows) == 3 and all(not r["demo_weights"] and r["task_id"] for r in rows.values())
    # The same seed gives the same numbers in-process and through the queue (to float32, the
    # exported type of a float field, as in the SDSS data model; the store keeps doubles).
    for r in run:
        assert np.float32(rows[r["path"]]["score"]) == np.float32(r["score"])
        assert np.float32(rows[r["path"]]["e_score"]) == np.float32(r["e_score"])

    # Export, with the schema's units.
    out_fits = tmp_path / "toy.fits"
    _specq(env, "results", "export", "--pipeline", "toy", "-o", out_fits)
    exported = Table.read(out_fits, hdu="BOSS")  # the summary-file layout: BOSS rows in HDU 1
    # TUNIT is the schema's spelling, verbatim (FITS has no numeric factors; astropy keeps it as text).
    assert len(exported) == 3 and str(exported["mean_flux"].unit) == "1e-17 erg / (s cm2 Angstrom)"
    assert set(exported["path"]) == set(rows)


def test_toy_pipeline_gets_settings_named_after_it(toy_setup, monkeypatch):
    env, _, _ = toy_setup
    for key, value in env.items():
        if key.startswith("SPECQ_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("SPECQ_TOY_QUEUE", "elsewhere")
    monkeypatch.setenv("SPECQ_TOY_CHUNK_SIZE", "7")
    from tasks.app import configure
    from workers.settings import load_settings
    from celery import Celery

    settings = load_settings()
    assert settings.queue_for("toy") == "elsewhere" and settings.chunk_size_for("toy") == 7
    assert settings.queue_for("bossnet") == "gpu"
    app = configure(Celery("toy-test"), settings)
    assert app.conf.task_routes["specq.toy"] == {"queue": "elsewhere"}
    assert "elsewhere" in {q.name for q in app.conf.task_queues}
