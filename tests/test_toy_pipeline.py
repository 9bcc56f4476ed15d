"""A pipeline defined only under tests/ runs end to end: nothing outside tests/ names it.

``tests/plugins/toy_pipeline.py`` declares a pipeline (a tiny numpy model with its own
schema) with specq's pipeline API alone (:mod:`workers.api`); ``SPECQ_PLUGINS`` registers
it. These tests drive it through every command: ``specq schema``, ``run``, ``enqueue`` to a
real worker on the embedded broker, ``status``, ``results export``, ``plot`` and ``summary``,
``bench`` and ``demo``; and a pipeline written into a temporary folder through ``specq run``.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

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

    # Status, summary and plots know it from its declaration; it declares no plots, and the
    # built-in pipelines' plots are still drawn beside it.
    status = _specq(env, "status", "--timeout", "3").stdout
    assert "queue toyq" in status and "results toy" in status and "workers: 1 live" in status
    summary = _specq(env, "results", "summary").stdout
    assert "toy: 3 rows" in summary and "flag_low_snr" in summary
    store.write("bossnet", [_bossnet_row()])
    plots = _specq(env, "results", "plot", "-o", tmp_path / "plots")
    assert "toy declares no plots (3 rows not drawn)" in plots.stderr
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["bossnet-fe_h.png", "bossnet-kiel.png",
                                                                      "bossnet-v_r.png"]
    _specq(env, "results", "plot", "-i", out_fits, "-o", tmp_path / "toy-plots")  # an exported file: no error
    assert not (tmp_path / "toy-plots").exists()


def _bossnet_row() -> dict:
    """A stored BossNet row beside the toy's (the plots of a registered pipeline with rows)."""
    return dict(spectrum_key="b.fits:1:0", path="b.fits", hdu=1, row=0, teff=5000.0, logg=4.0, fe_h=-0.1,
                bn_v_r=3.0, result_flags=0, flag_warn=False, flag_bad=False, model_sha256="s" * 64,
                demo_weights=False)


def test_toy_pipeline_is_benched_and_demonstrated(tmp_path, toy_setup, clean_redis):
    env, _, _ = toy_setup
    # No baseline declared: the engine and the queue are timed, and the bench says why there is no ratio.
    bench = _specq(env, "bench", "--pipeline", "toy", "--spectra", "3", "--broker", clean_redis,
                   "--json", tmp_path / "bench.json").stdout
    assert "specq bench — toy, 4 draws" in bench and "toy declares no straightforward way" in bench
    assert "queue/engine" in bench
    import json

    (saved,) = json.loads((tmp_path / "bench.json").read_text())
    assert saved["engine_per_s"] > 0 and saved["queue_per_s"] > 0 and saved["speedup"] is None

    demo = _specq(env, "demo", "--pipeline", "toy", "--spectra", "3").stdout
    assert "writing 3 BOSS and 0 APOGEE synthetic spectra" in demo and "on queues toyq" in demo
    assert "toy: 3 rows" in demo and "--pipeline toy" in demo
    assert (tmp_path / "state" / "demo" / "toy.fits").exists()


def test_the_toy_imports_the_pipeline_api_alone():
    tree = ast.parse((PLUGINS / "toy_pipeline.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert {m for m in imported if m.split(".")[0] in ("specq", "tasks", "workers")} == {"workers.api"}


OUT_OF_TREE = textwrap.dedent('''
    """A pipeline kept beside a deployment's code: the brightest pixel of each BOSS spectrum."""
    import hashlib

    import numpy as np

    from workers.api import Field, Flag, Pipeline, PipelineSpec, ResultSchema, row_values

    SCHEMA = ResultSchema(
        pipeline="peak",
        exception_flag="flag_failed",
        description="The brightest finite pixel.",
        fields=(Field("peak_flux", "float", "1e-17 erg / (s cm2 Angstrom)", "Largest finite flux"),),
        flags=(Flag("flag_failed", 0, "The spectrum could not be processed"),),
        warn_bits=(),
        bad_bits=("flag_failed",),
    )
    SPEC = PipelineSpec(name="peak", title="Peak", instrument="boss", schema=SCHEMA, runner="peak_pipeline:Peak")


    class Peak(Pipeline):
        spec = SPEC
        demo = False
        model_sha256 = hashlib.sha256(b"peak").hexdigest()

        def _predict(self, spectra, options):
            return [row_values(self.schema, {"peak_flux": float(np.nanmax(s.flux)), "result_flags": 0})
                    for s in spectra]
''')


def test_a_pipeline_from_a_folder_outside_the_tree_runs(tmp_path):
    from specq.testing.synthetic import write_spec_lite

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "peak_pipeline.py").write_text(OUT_OF_TREE)
    spectrum = tmp_path / "spec-1-2-3.fits"
    write_spec_lite(spectrum, teff=5000, logg=4.0, fe_h=0.0, v_r=0.0, snr=30, seed=1)
    env = worker_env(tmp_path, tmp_path, f"sqlite:///{tmp_path / 'results.sqlite'}", SPECQ_PLUGINS="peak_pipeline")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(plugins)])
    out = tmp_path / "peak.csv"
    _specq(env, "run", "--pipeline", "peak", "-o", out, spectrum, cwd=tmp_path)
    from astropy.table import Table

    from workers.readers import read_spectrum

    table = Table.read(out)
    flux = read_spectrum(spectrum, 1, 0).flux
    assert list(table["path"]) == [str(spectrum.name)] and [str(v) for v in table["flag_bad"]] == ["False"]
    assert np.float32(table["peak_flux"][0]) == np.float32(np.nanmax(flux))


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


def test_a_plugin_is_listed_only_while_it_is_named(monkeypatch):
    """A process that named a plugin once (the feed bench names the null model) does not keep
    it: later callers list the pipelines configured now."""
    from specq.bench.feed import null_pipelines
    from workers import registry

    monkeypatch.delenv("SPECQ_PLUGINS", raising=False)
    assert "null_boss" not in registry.names()
    with null_pipelines():
        assert {"null_boss", "null_apogee"} <= set(registry.names())
        assert registry.get("null_boss").instrument == "boss"
    assert "SPECQ_PLUGINS" not in os.environ
    assert "null_boss" not in registry.names()
    with pytest.raises(ValueError, match="unknown pipeline 'null_boss'"):
        registry.get("null_boss")
