"""Giving up without losing a spectrum: model load failures, unreadable refs, device memory.

Fast unit tests: ``run_task`` and the engine called directly, a SQLite store in
``tmp_path``, and (where the model does not matter) a tiny stand-in pipeline.
"""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest

from workers.refs import SpectrumRef
from workers.settings import load_settings
from tasks import runner
from workers import engine, registry
from workers.pipeline import UNLOADED_MODEL_SHA, Pipeline
from workers.readers import TransientReadError
from workers.store import ResultStore
from specq.testing.synthetic import write_spec_lite

MAX_RETRIES = 2


class Retried(Exception):
    """What the fake task's ``retry`` raises (Celery raises its own ``Retry``)."""


class FakeTask:
    """Just enough of a bound Celery task for ``run_task``; records retries."""

    def __init__(self, settings, retries=0):
        self.app = SimpleNamespace(specq_settings=settings)
        self.request = SimpleNamespace(id="task-1", retries=retries, hostname="test@host")
        self.retried = []

    def retry(self, exc=None, countdown=None, max_retries=None):
        self.retried.append(exc)
        raise Retried(exc)


class TinyPipeline(Pipeline):
    """A model-free BossNet look-alike: constant results, or OOM on chosen files."""

    spec = registry.get("bossnet")
    model_sha256 = "f" * 64
    demo = False

    def __init__(self, oom_on=(), oom=None):
        super().__init__()
        self.oom_on = set(oom_on)
        self.oom = oom or (lambda: _torch().cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
        self.calls = []

    def _predict(self, spectra, options):
        self.calls.append(len(spectra))
        if any(s.path in self.oom_on for s in spectra):
            raise self.oom()
        row = {f.name: 1.0 for f in self.schema.all_fields}
        return [{**row, "teff": 5000.0, "result_flags": 0} for _ in spectra]


def _torch():
    import torch

    return torch


@pytest.fixture
def settings(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for i, name in enumerate(("a.fits", "b.fits", "c.fits")):
        write_spec_lite(root / name, teff=5000 + 100 * i, logg=4.0, fe_h=0.0, v_r=0.0, snr=30, seed=i)
    return load_settings(data_root=root, database_url=f"sqlite:///{tmp_path / 'r.sqlite'}",
                         weights_dir=tmp_path / "weights", max_retries=MAX_RETRIES)


def _rows(settings, pipeline="bossnet"):
    return {r["spectrum_key"]: r for r in ResultStore(settings.database).rows(pipeline)}


REFS = [{"path": "a.fits", "hdu": 1, "row": 0}, {"path": "b.fits", "hdu": 1, "row": 0}]


# -- (a) a pipeline that cannot load --------------------------------------------------
def _corrupt_bossnet(folder):
    folder.mkdir()
    (folder / "bossnet.pt").write_bytes(b"PK\x03\x04 not really a zip archive" * 100)


def _misshapen_astronn(folder):
    import torch

    from workers.astronn_dist.network import ApogeeDistBCNN

    state = ApogeeDistBCNN().state_dict()
    name = next(k for k, v in state.items() if v.ndim >= 2)
    state[name] = torch.zeros(*(n + 1 for n in state[name].shape))
    folder.mkdir()
    buf = io.BytesIO()
    torch.save({"model_state_dict": state}, buf)
    (folder / "astronn_dist.pt").write_bytes(buf.getvalue())


@pytest.mark.parametrize("pipeline_name,breaker,flag", [
    ("bossnet", _corrupt_bossnet, "flag_runtime_exception"),
    ("astronn_dist", _misshapen_astronn, "flag_no_result"),
])
def test_broken_weights_flag_every_spectrum_at_once(settings, pipeline_name, breaker, flag):
    breaker(settings.weights_dir)
    task = FakeTask(settings, retries=0)
    refs = [*REFS, {"path": "../outside"}]
    summary = runner.run_task(task, pipeline_name, refs, {"draws": 1})
    assert task.retried == []  # permanent: no retry, at once
    rows = _rows(settings, pipeline_name)
    assert summary["rows"] == 3 and len(rows) == 3
    bit = engine.unloaded_pipeline(pipeline_name).schema.flag(flag).value
    for key in ("a.fits:1:0", "b.fits:1:0"):
        row = rows[key]
        assert row["error"].startswith("model not loaded: WeightsError")
        assert row["result_flags"] & bit and row["flag_bad"]
        assert row["model_sha256"] == UNLOADED_MODEL_SHA and row["demo_weights"] is False
        assert row["task_id"] == "task-1" and row["worker"] == "test@host" and row["code_version"]
    invalid = [r for k, r in rows.items() if k.startswith("invalid:")]
    assert len(invalid) == 1 and "invalid reference" in invalid[0]["error"] and invalid[0]["flag_bad"]


def test_transient_load_error_retries_then_flags(settings, monkeypatch):
    def stale(*args, **kwargs):
        raise OSError(116, "Stale file handle")

    monkeypatch.setattr(engine, "get_pipeline", stale)
    for attempt in range(MAX_RETRIES):
        task = FakeTask(settings, retries=attempt)
        with pytest.raises(Retried):
            runner.run_task(task, "bossnet", REFS, {})
        assert isinstance(task.retried[0], OSError)
    assert _rows(settings) == {}

    task = FakeTask(settings, retries=MAX_RETRIES)
    summary = runner.run_task(task, "bossnet", REFS, {})
    rows = _rows(settings)
    assert task.retried == [] and summary["rows"] == 2 and set(rows) == {"a.fits:1:0", "b.fits:1:0"}
    for row in rows.values():
        assert row["error"].startswith(f"gave up after {MAX_RETRIES} retries: model not loaded: OSError")
        assert row["flag_bad"] and row["result_flags"] & 1 and row["model_sha256"] == UNLOADED_MODEL_SHA


def test_out_of_memory_while_loading_is_transient(settings, monkeypatch):
    def oom(*args, **kwargs):
        raise _torch().cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(engine, "get_pipeline", oom)
    with pytest.raises(Retried):
        runner.run_task(FakeTask(settings, retries=0), "bossnet", REFS, {})


def test_unloaded_pipeline_matches_the_real_classes():
    for name, spec in registry.pipelines().items():
        real = spec.load_class()
        stand_in = engine.unloaded_pipeline(name)
        assert stand_in.exception_flag == real.exception_flag
        assert stand_in.schema is real.schema and stand_in.instrument == real.instrument
        row = stand_in.failed_row("x")
        assert row["result_flags"] == real.schema.flag(real.exception_flag).value
        assert all(np.isnan(row[f.name]) for f in real.schema.all_fields if f.dtype == "float")
    with pytest.raises(ValueError):
        engine.unloaded_pipeline("nope")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_model_result_replaces_the_unloaded_placeholder(tmp_path, request, backend):
    url = (f"sqlite:///{tmp_path / 'r.sqlite'}" if backend == "sqlite"
           else request.getfixturevalue("postgres_schema_url"))
    store = ResultStore(url)

    def row(key, sha, teff):
        return {"spectrum_key": key, "path": key.split(":")[0], "hdu": 1, "row": 0, "teff": teff,
                "result_flags": 0 if teff else 1, "model_sha256": sha}

    store.write("bossnet", [row("a:1:0", UNLOADED_MODEL_SHA, None), row("b:1:0", UNLOADED_MODEL_SHA, None)])
    store.write("bossnet", [row("a:1:0", "s" * 64, 5000.0)])  # the model loads at last: a's result
    store.write("bossnet", [row("a:1:0", UNLOADED_MODEL_SHA, None)])  # a later load failure adds nothing
    rows = {(r["spectrum_key"], r["model_sha256"]) for r in store.rows("bossnet")}
    assert rows == {("a:1:0", "s" * 64), ("b:1:0", UNLOADED_MODEL_SHA)}


# -- (b) one unreadable reference among many ----------------------------------------
def test_read_jobs_raises_until_the_last_attempt(settings):
    ref = SpectrumRef("missing.fits", 1, 0)
    with pytest.raises(TransientReadError):
        engine.read_jobs(ref, settings.data_root, "boss")
    (job,) = engine.read_jobs(ref, settings.data_root, "boss", last_attempt=True)
    assert job.spectrum is None and job.error.startswith("still unreadable on the last attempt: TransientReadError")
    (file_level,) = engine.read_jobs(SpectrumRef("missing.fits"), settings.data_root, "boss", last_attempt=True)
    assert file_level.ref.key == "missing.fits:*:*" and "unreadable" in file_level.error


def test_read_jobs_flags_only_the_slot_that_fails(settings, monkeypatch):
    from workers import readers

    real = readers.read_spectrum

    def flaky(path, hdu, row, **kwargs):
        if kwargs.get("rel_path") == "b.fits":
            raise OSError(5, "Input/output error")
        return real(path, hdu, row, **kwargs)

    monkeypatch.setattr(readers, "read_spectrum", flaky)
    jobs = [j for r in ("a.fits", "b.fits") for j in
            engine.read_jobs(SpectrumRef(r), settings.data_root, "boss", last_attempt=True)]
    assert [j.ref.key for j in jobs] == ["a.fits:1:0", "b.fits:1:0"]
    assert jobs[0].error is None and jobs[0].spectrum is not None
    assert "OSError" in jobs[1].error


def test_one_missing_file_flags_only_itself_on_the_last_attempt(settings, monkeypatch):
    pipeline = TinyPipeline()
    monkeypatch.setattr(engine, "get_pipeline", lambda *a, **k: pipeline)
    refs = [REFS[0], {"path": "late.fits", "hdu": 1, "row": 0}, REFS[1]]

    task = FakeTask(settings, retries=MAX_RETRIES - 1)  # not the last attempt: the file may still appear
    with pytest.raises(Retried):
        runner.run_task(task, "bossnet", refs, {})
    assert isinstance(task.retried[0], TransientReadError) and _rows(settings) == {}

    summary = runner.run_task(FakeTask(settings, retries=MAX_RETRIES), "bossnet", refs, {})
    rows = _rows(settings)
    assert summary["rows"] == 3 and summary["flag_bad"] == 1 and len(rows) == 3
    late = rows["late.fits:1:0"]
    assert late["flag_bad"] and late["result_flags"] & 1 and "still unreadable" in late["error"]
    for key in ("a.fits:1:0", "b.fits:1:0"):
        assert rows[key]["teff"] == 5000.0 and not rows[key]["flag_bad"] and rows[key]["error"] is None
        assert rows[key]["model_sha256"] == "f" * 64


# -- (c) a single spectrum out of device memory ---------------------------------------
OOMS = {
    "OutOfMemoryError": lambda: _torch().cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "RuntimeError": lambda: RuntimeError("CUDA error: out of memory"),
}


@pytest.mark.parametrize("kind", sorted(OOMS))
def test_single_spectrum_oom_is_retried_then_flagged_alone(settings, monkeypatch, kind):
    pipeline = TinyPipeline(oom_on={"b.fits"}, oom=OOMS[kind])
    monkeypatch.setattr(engine, "get_pipeline", lambda *a, **k: pipeline)
    refs = [*REFS, {"path": "c.fits", "hdu": 1, "row": 0}]

    task = FakeTask(settings, retries=0)
    with pytest.raises(Retried):
        runner.run_task(task, "bossnet", refs, {})
    assert engine.is_out_of_memory(task.retried[0]) and _rows(settings) == {}

    summary = runner.run_task(FakeTask(settings, retries=MAX_RETRIES), "bossnet", refs, {})
    rows = _rows(settings)
    assert summary["rows"] == 3 and summary["flag_bad"] == 1 and len(rows) == 3
    b = rows["b.fits:1:0"]
    assert b["flag_bad"] and b["result_flags"] & 1
    assert b["error"].startswith(f"out of device memory on the last attempt: {kind}")
    for key in ("a.fits:1:0", "c.fits:1:0"):
        assert rows[key]["teff"] == 5000.0 and not rows[key]["flag_bad"] and rows[key]["error"] is None


def test_predict_isolating_splits_then_reraises_a_single_oom(settings):
    spectra = [job.spectrum for r in ("a.fits", "b.fits", "c.fits")
               for job in engine.read_jobs(SpectrumRef(r, 1, 0), settings.data_root, "boss")]
    pipeline = TinyPipeline(oom_on={"b.fits"})
    with pytest.raises(_torch().cuda.OutOfMemoryError):
        engine.predict_isolating(pipeline, spectra)
    rows = engine.predict_isolating(pipeline, spectra, last_attempt=True)
    assert [r["teff"] for r in rows][::2] == [5000.0, 5000.0]
    assert np.isnan(rows[1]["teff"]) and "out of device memory" in rows[1]["error"]
