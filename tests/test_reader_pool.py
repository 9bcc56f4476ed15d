"""Parallel readers: the same rows, identities and errors as one reader; a reader that dies
or hangs on a file is a retry or a flagged row, never a stuck worker or a lost spectrum.

The null pipeline stands in for a network; reader processes are real (forkserver) processes.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from specq.testing.synthetic import make_dataset, write_spec_lite
from workers import engine
from workers.null.pipeline import NullApogeePipeline, NullPipeline
from workers.reader_pool import ReaderPool
from workers.readers import TransientReadError
from workers.refs import SpectrumRef

PARALLEL = [(2, "process"), (3, "thread")]


def _comparable(rows: list[dict]) -> list[dict]:
    """Rows less the time each took (the only column that may differ between runs)."""
    return [{k: v for k, v in row.items() if k != "t_elapsed"} for row in rows]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, list[SpectrumRef], list[SpectrumRef]]:
    """A data root with every format, plus references that fail in every way a reader knows."""
    root = tmp_path_factory.mktemp("mixed")
    make_dataset(root, n_boss=30, n_apogee=8, seed=3)
    boss = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.fits") if "apStar" not in p.name)
    apogee = sorted(p.relative_to(root).as_posix() for p in root.rglob("apStar*.fits"))
    (root / "junk.fits").write_bytes(b"not a FITS file at all" * 200)
    cut = root / "boss" / "spec-1-60000-1.fits"
    write_spec_lite(cut, teff=5000, logg=4, fe_h=0, v_r=0, snr=30, seed=1)
    cut.write_bytes(cut.read_bytes()[:4000])
    bad = [SpectrumRef("junk.fits"), SpectrumRef("boss/spec-1-60000-1.fits", 1, 0),
           SpectrumRef(boss[0], 1, 999), SpectrumRef("folder-that-is-not-there/spec-2-3-4.fits", 1, 0)]
    # File-level references (expanded by the readers) mixed with spectrum-level ones.
    refs_boss = [SpectrumRef(p) for p in boss[:6]] + [SpectrumRef(p, 1, 0) for p in boss[6:]
                                                      if "spec-" in p] + bad
    return root, refs_boss, [SpectrumRef(p) for p in apogee]


@pytest.mark.parametrize("readers, kind", PARALLEL)
def test_rows_order_identity_and_errors_match_one_reader(mixed, readers, kind):
    root, refs, apogee = mixed
    for pipeline, these in ((NullPipeline(batch_size=8), refs), (NullApogeePipeline(batch_size=4), apogee)):
        one = engine.process(pipeline, these, root, last_attempt=True)
        many = engine.process(pipeline, these, root, last_attempt=True, readers=readers, reader_kind=kind)
        assert [r["spectrum_key"] for r in many] == [r["spectrum_key"] for r in one]
        assert _comparable(many) == _comparable(one)
        if pipeline.instrument == "boss":  # every kind of bad reference is there, each flagged
            assert sum(bool(r.get("error")) for r in one) == 4


def _read_in_a_daemon(root: Path, refs: list[SpectrumRef], out) -> None:
    """In a daemonic process (as a Celery prefork pool's child): rows of two process readers."""
    import multiprocessing

    assert multiprocessing.current_process().daemon
    try:
        rows = engine.process(NullPipeline(batch_size=4), refs, root, last_attempt=True, readers=2,
                              reader_kind="process")
        out.put(("rows", _comparable(rows)))
    except Exception as exc:  # sent back whole: the test says what went wrong
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def test_a_daemonic_process_reads_with_threads_and_gives_the_same_rows(mixed):
    """A prefork pool's child may start no processes: its readers are threads, its rows the same."""
    import multiprocessing

    root, refs, _ = mixed
    context = multiprocessing.get_context("forkserver")
    out = context.Queue()
    child = context.Process(target=_read_in_a_daemon, args=(root, refs[:10], out), daemon=True)
    child.start()
    kind, got = out.get(timeout=120)
    child.join(30)
    assert kind == "rows", got

    def nan_as_text(rows):  # a NaN sent through a pipe is another object, and NaN != NaN
        return [{k: "nan" if isinstance(v, float) and v != v else v for k, v in row.items()} for row in rows]

    expected = _comparable(engine.process(NullPipeline(batch_size=4), refs[:10], root, last_attempt=True))
    assert nan_as_text(got) == nan_as_text(expected)


@pytest.mark.parametrize("readers, kind", PARALLEL)
def test_a_missing_file_raises_the_same_retry_before_the_last_attempt(mixed, readers, kind):
    root, refs, _ = mixed
    pipeline = NullPipeline(batch_size=8)
    with pytest.raises(TransientReadError) as single:
        engine.process(pipeline, refs, root)
    with pytest.raises(TransientReadError) as parallel:
        engine.process(pipeline, refs, root, readers=readers, reader_kind=kind)
    assert str(parallel.value) == str(single.value)


class _Overlapping(NullPipeline):
    """The null model, noting for each batch but the last whether the next one was being prepared while it ran."""

    def __init__(self, batches: int):
        super().__init__(batch_size=4)
        self.begun = [threading.Event() for _ in range(batches)]
        self.prepared = self.finished = 0
        self.overlapped: list[bool] = []

    def _prepare(self, spectra, options):
        self.prepared += 1
        self.begun[self.prepared - 1].set()
        return super()._prepare(spectra, options)

    def _finish(self, prepared):
        self.finished += 1
        if self.finished < len(self.begun):
            self.overlapped.append(self.begun[self.finished].wait(30))
        return super()._finish(prepared)


@pytest.mark.parametrize("readers, kind", [(1, "process"), *PARALLEL])
def test_a_batch_prepared_ahead_changes_no_row(mixed, readers, kind):
    root, refs, _ = mixed
    pipeline = NullPipeline(batch_size=4)
    assert not pipeline.prepares_ahead  # on a CPU: the next batch is read ahead, not prepared
    plain = engine.process(pipeline, refs, root, last_attempt=True, readers=readers, reader_kind=kind)
    ahead = engine.process(pipeline, refs, root, last_attempt=True, readers=readers, reader_kind=kind,
                           prepare_ahead=True)
    assert _comparable(ahead) == _comparable(plain)
    # Each batch runs while the next one is prepared (in another thread).
    good = [SpectrumRef(p.relative_to(root).as_posix(), 1, 0) for p in sorted(root.rglob("spec-*.fits"))
            if p.stat().st_size > 10_000]
    overlapping = _Overlapping(len(engine.growing_chunks(good, 4)))
    rows = engine.process(overlapping, good, root, readers=readers, reader_kind=kind, prepare_ahead=True)
    assert len(rows) == len(good) >= 5 and not any(r.get("error") for r in rows)
    assert overlapping.overlapped == [True] * (len(overlapping.begun) - 1)


def _killer_refs(root: Path) -> tuple[list[SpectrumRef], str]:
    refs = [SpectrumRef(p.relative_to(root).as_posix(), 1, 0) for p in sorted(root.rglob("spec-*.fits"))
            if p.stat().st_size > 10_000][:10]
    return refs, refs[4].path


def test_a_reader_killed_mid_file_is_a_retry_then_a_flagged_row(mixed, monkeypatch):
    root, _, _ = mixed
    refs, killer = _killer_refs(root)
    pipeline = NullPipeline(batch_size=4)
    expected = engine.process(pipeline, refs, root)
    monkeypatch.setenv("SPECQ_FAULT_KILL_READER", killer)
    # A read timeout of its own gives this test a pool of its own, started with the hook set.
    kw = dict(readers=2, reader_kind="process", read_timeout=61.0)
    with pytest.raises(TransientReadError, match="died"):
        engine.process(pipeline, refs, root, **kw)
    rows = engine.process(pipeline, refs, root, last_attempt=True, **kw)
    assert [r["spectrum_key"] for r in rows] == [r["spectrum_key"] for r in expected]
    flagged = [r for r in rows if r.get("error")]
    assert [r["path"] for r in flagged] == [killer]
    assert "reader process died" in flagged[0]["error"] and flagged[0]["flag_bad"]
    assert "will retry" not in flagged[0]["error"]  # the last attempt: nothing will
    others = [r for r in rows if r["path"] != killer]
    assert _comparable(others) == _comparable([r for r in expected if r["path"] != killer])
    monkeypatch.delenv("SPECQ_FAULT_KILL_READER")


def test_a_hanging_reader_is_replaced_and_its_file_flagged(mixed, monkeypatch):
    root, _, _ = mixed
    refs, hanger = _killer_refs(root)
    pipeline = NullPipeline(batch_size=4)
    monkeypatch.setenv("SPECQ_FAULT_HANG_READER", hanger)
    kw = dict(readers=2, reader_kind="process", read_timeout=2.0)
    rows = engine.process(pipeline, refs, root, last_attempt=True, **kw)
    assert len(rows) == len(refs)
    flagged = [r for r in rows if r.get("error")]
    assert [r["path"] for r in flagged] == [hanger]
    assert "did not finish within 2 s" in flagged[0]["error"] and "will retry" not in flagged[0]["error"]
    with pytest.raises(TransientReadError, match="did not finish.*will retry"):
        engine.process(pipeline, refs, root, **kw)


def _double(x):
    return 2 * x


def test_the_pool_yields_every_item_once_within_its_window():
    pool = ReaderPool(2, "process")
    try:
        got = dict(pool.read(_double, list(range(40)), window=3, lost=lambda item, exc: None))
    finally:
        pool.close()
    assert got == {i: 2 * i for i in range(40)}


def _logging_here(_):
    """The format and level a reader process logs in."""
    import logging

    from workers import logs

    handlers = [h for h in logging.getLogger().handlers if getattr(h, "specq", False)]
    return logs.active_format(), type(handlers[0].formatter).__name__, logging.getLogger().level


def test_reader_processes_log_in_the_format_and_level_of_their_worker(monkeypatch):
    """A line a reader logs (a spectrum flagged on the last attempt) must not skip the worker's JSON format."""
    import logging

    from workers import logs

    monkeypatch.setattr(logs, "_active_format", "json")
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", logging.INFO)
    pool = ReaderPool(1, "process")
    try:
        (_, got), = pool.read(_logging_here, [None], window=1, lost=lambda item, exc: None)
    finally:
        pool.close()
    assert got == ("json", "JsonFormatter", logging.INFO)


def test_settings_readers(monkeypatch):
    from workers.reader_pool import READER_KINDS, default_readers
    from workers.settings import READER_KINDS as SETTINGS_KINDS, load_settings

    assert SETTINGS_KINDS == READER_KINDS
    assert load_settings().reader_count == default_readers() >= 1
    monkeypatch.setenv("SPECQ_READERS", "3")
    monkeypatch.setenv("SPECQ_READER_KIND", "thread")
    settings = load_settings()
    assert (settings.reader_count, settings.reader_kind) == (3, "thread")
    assert engine.reading(settings) == {"readers": 3, "reader_kind": "thread", "read_timeout": 300.0}
    monkeypatch.setenv("SPECQ_READERS", "0")
    with pytest.raises(ValueError, match="SPECQ_READERS must be at least 1, not 0"):
        load_settings()



def test_readers_exit_when_their_worker_is_killed():
    """A worker killed with -9 (or by the kernel's OOM killer) leaves no reader process behind:
    nothing else would ever tell a reader waiting for its next file."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import ROOT, wait_for

    owner = subprocess.Popen(
        [sys.executable, "-c",
         "import time\n"
         "from workers.reader_pool import ReaderPool\n"
         "pool = ReaderPool(2, 'process')\n"
         "assert sorted(v for _, v in pool.read(abs, [-3, -1, -2, -4], 4, None)) == [1, 2, 3, 4]\n"
         "print(' '.join(str(pid) for pid in pool._pool()._processes), flush=True)\n"
         "time.sleep(600)\n"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        readers = [int(pid) for pid in owner.stdout.readline().split()]
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(30)
    assert len(readers) >= 1

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for its parent counts as gone
            return stat.read().rpartition(")")[2].split()[0] == "Z"

    wait_for(lambda: all(gone(pid) for pid in readers), 30, 0.2, what="the readers to exit")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pipe sizes are Linux's")
def test_reader_processes_send_their_spectra_through_a_wide_pipe():
    import fcntl

    pool = ReaderPool(1, "process")
    try:
        assert list(pool.read(abs, [-3], 1, lambda item, exc: None)) == [(0, 3)]
        result_pipe = pool._executor._result_queue._reader
        assert fcntl.fcntl(result_pipe.fileno(), 1032) >= 1 << 20  # F_GETPIPE_SZ
    finally:
        pool.close()
