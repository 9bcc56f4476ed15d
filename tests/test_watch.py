"""The streaming producer: complete files only, each file once, across restarts."""
from __future__ import annotations

import logging
import os
import threading
import time

import pytest

from tasks.producer import Submission
from workers.refs import SpectrumRef
from workers.settings import load_settings
from tasks.watch import Watcher


class RecordingSubmit:
    def __init__(self):
        self.sent: list[str] = []

    def __call__(self, paths, pipelines, settings=None, options=None):
        sub = Submission()
        refs = [SpectrumRef(os.path.relpath(p, settings.data_root), 1, 0) for p in paths]
        sub.refs = {"bossnet": refs}
        sub.task_ids = {"bossnet": [f"t{len(self.sent)}"]}
        self.sent += [r.path for r in refs]
        return sub


def _settings(tmp_path):
    root = tmp_path / "data"
    (root / "night1").mkdir(parents=True)
    return load_settings(data_root=root, state_dir=tmp_path / "state")


def test_growing_file_is_sent_only_once_stable(tmp_path):
    settings = _settings(tmp_path)
    rec = RecordingSubmit()
    w = Watcher([settings.data_root], "bossnet", settings, settle=5.0, events=False, submit=rec)
    f = settings.data_root / "night1" / "spec-1-2-3.fits"
    f.write_bytes(b"x" * 100)
    t = 1000.0
    assert w.scan(now=t) == 0          # first sight: not yet known to be stable
    with open(f, "ab") as fh:          # still being written
        fh.write(b"y" * 100)
    assert w.scan(now=t + 6) == 0      # changed since: the clock restarts
    assert w.scan(now=t + 8) == 0
    assert w.scan(now=t + 12) == 1     # unchanged for 6 s ≥ settle
    assert rec.sent == ["night1/spec-1-2-3.fits"]
    assert w.scan(now=t + 20) == 0     # never twice
    (settings.data_root / "night1" / "notes.txt").write_text("ignored")
    (settings.data_root / "night1" / ".spec-9-9-9.fits").write_bytes(b"partial")
    assert w.scan(now=t + 40) == 0
    w.close()


def test_record_survives_a_restart(tmp_path):
    settings = _settings(tmp_path)
    rec = RecordingSubmit()
    f = settings.data_root / "night1" / "mwmStar-0.6.0-1.fits"
    f.write_bytes(b"z" * 10)
    w = Watcher([settings.data_root], "bossnet", settings, settle=0.0, events=False, submit=rec)
    assert w.scan() == 1
    w.close()
    w2 = Watcher([settings.data_root], "bossnet", settings, settle=0.0, events=False, submit=rec)
    (settings.data_root / "night1" / "apStar-dr17-apo25m-2M1.fits").write_bytes(b"q" * 10)
    assert w2.scan() == 1
    assert rec.sent == ["night1/mwmStar-0.6.0-1.fits", "night1/apStar-dr17-apo25m-2M1.fits"]
    assert [r[0] for r in w2.record.rows()] == rec.sent
    w2.close()


def test_a_name_that_is_not_utf8_is_reported_once_and_the_other_files_are_sent(tmp_path, caplog):
    """No message, record or row can hold such a name: watch says so once and goes on."""
    settings = _settings(tmp_path)
    rec = RecordingSubmit()
    night = settings.data_root / "night1"
    (night / os.fsdecode(b"spec-1-2-3\xff.fits")).write_bytes(b"z" * 10)
    (night / "spec-1-2-4.fits").write_bytes(b"z" * 10)
    w = Watcher([settings.data_root], "bossnet", settings, settle=0.0, events=False, submit=rec)
    with caplog.at_level(logging.ERROR, logger="specq.watch"):
        assert w.scan() == 1
        assert w.scan() == 0
    w.close()
    assert rec.sent == ["night1/spec-1-2-4.fits"]
    assert [r.getMessage() for r in caplog.records if r.name == "specq.watch"] == [
        "night1/spec-1-2-3\\xff.fits: the name is not UTF-8 text; rename the file; not sent"]


def test_close_event_sends_without_waiting_for_a_scan(tmp_path):
    settings = _settings(tmp_path)
    rec = RecordingSubmit()
    w = Watcher([settings.data_root], "bossnet", settings, poll_interval=60, settle=60, events=True, submit=rec)
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(0.5)                    # the first scan has run: only events can send now
    tmp = settings.data_root / "night1" / "spec-5-5-5.fits.part"
    tmp.write_bytes(b"a" * 50)
    os.replace(tmp, settings.data_root / "night1" / "spec-5-5-5.fits")
    deadline = time.monotonic() + 10
    while not rec.sent and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(10)
    assert rec.sent == ["night1/spec-5-5-5.fits"]


def test_folder_outside_the_root_is_refused(tmp_path):
    settings = _settings(tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    try:
        Watcher([other], "bossnet", settings, events=False, submit=RecordingSubmit())
    except ValueError as exc:
        assert "not under the data root" in str(exc)
    else:
        raise AssertionError("a folder outside the data root must be refused")


def test_file_not_readable_yet_is_not_recorded_and_is_sent_again(tmp_path, monkeypatch):
    # A file the producer cannot read yet (not found, permission denied: a copy in
    # progress) is sent nowhere and stays pending; the watcher sends it once readable.
    from tasks.producer import submit
    from workers import readers
    from specq.testing.synthetic import write_spec_lite

    settings = _settings(tmp_path)
    calls = []

    def real_submit(paths, pipelines, settings=None, options=None):
        sub = submit(paths, pipelines, settings=settings, options=options, celery_app=_NoSend(),
                     wait_unreadable=True)
        calls.append(sub)
        return sub

    blocked = {"night1/spec-2-60000-2.fits"}
    real_list = readers.list_spectra

    def list_spectra(path, *args, **kwargs):
        if any(str(path).endswith(b) for b in blocked):
            raise readers.TransientReadError(f"{path}: permission denied (will retry)")
        return real_list(path, *args, **kwargs)

    monkeypatch.setattr(readers, "list_spectra", list_spectra)
    w = Watcher([settings.data_root], "bossnet", settings, settle=1.0, events=False, submit=real_submit)
    for i in (1, 2):
        write_spec_lite(settings.data_root / "night1" / f"spec-{i}-60000-{i}.fits", teff=5000, logg=4,
                        fe_h=0, v_r=0, snr=30, seed=i)
    w.scan(now=0.0)
    assert w.scan(now=5.0) == 1  # the readable file is sent, the other is not
    assert calls[-1].unreadable == ["night1/spec-2-60000-2.fits"]
    assert [r.path for r in calls[-1].refs["bossnet"]] == ["night1/spec-1-60000-1.fits"]
    blocked.clear()
    assert w.scan(now=10.0) == 1 and calls[-1].unreadable == []
    assert [r.path for r in calls[-1].refs["bossnet"]] == ["night1/spec-2-60000-2.fits"]


class _NoSend:
    """A Celery app stand-in: messages are built, not sent."""

    def __init__(self):
        from workers.settings import load_settings

        self.specq_settings = load_settings()

    def send_task(self, *args, **kwargs):
        return type("Result", (), {"id": f"t{id(args)}"})()


@pytest.mark.filterwarnings("ignore:Error validating header")  # astropy on the junk, on purpose
def test_fits_backend_from_specq_toml_reaches_the_producer(tmp_path, monkeypatch):
    """``fits_backend`` in specq.toml is the backend the watcher's producer reads files with.

    A file with junk after its last HDU: the native backend reads it (its astropy safety
    net accepts the junk), the astropy backend refuses it, so the references sent show
    which backend listed the file.
    """
    from tasks.producer import submit
    from specq.testing.synthetic import write_spec_lite

    monkeypatch.chdir(tmp_path)
    sent = []

    def real_submit(paths, pipelines, settings=None, options=None):
        sub = submit(paths, pipelines, settings=settings, options=options, celery_app=_NoSend())
        sent.append(sub)
        return sub

    for backend, expected in (("native", [(1, 0)]), ("astropy", [(None, None)])):
        (tmp_path / "specq.toml").write_text(f'[specq]\nfits_backend = "{backend}"\n')
        settings = load_settings(data_root=tmp_path / backend, state_dir=tmp_path / f"state-{backend}")
        assert settings.fits_backend == backend
        path = settings.data_root / "spec-1-60000-1.fits"
        path.parent.mkdir()
        write_spec_lite(path, teff=5000, logg=4, fe_h=0, v_r=0, snr=30, seed=1)
        with open(path, "ab") as fh:
            fh.write(b"junk that is not a FITS extension" * 100)
        w = Watcher([settings.data_root], "bossnet", settings, settle=0.0, events=False, submit=real_submit)
        assert w.scan() == 1
        w.close()
        assert [(r.hdu, r.row) for r in sent[-1].refs["bossnet"]] == expected, backend


# -- a real `specq watch` process ---------------------------------------------------------
class WatchProcess:
    """``specq watch`` in a subprocess, on the embedded broker; its log is what it did."""

    def __init__(self, tmp_path, root, *extra: str):
        import subprocess
        import sys

        from conftest import ROOT, worker_env

        self.env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'state' / 'results.sqlite'}")
        self.log_path = tmp_path / f"watch-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "specq.cli", "watch", str(root), "--pipeline", "bossnet",
                                      "--settle", "1", "--poll-interval", "0.5", *extra],
                                     env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_log("watching", 60)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 30, count: int = 1) -> None:
        from conftest import wait_for

        wait_for(lambda: self.text().count(needle) >= count, timeout, 0.1, what=f"{needle!r} in the watch log",
                 on_fail=self.text)

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.log.close()


@pytest.fixture
def watch_process(tmp_path):
    started = []

    def start(root, *extra):
        w = WatchProcess(tmp_path, root, *extra)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def _spectrum_bytes(tmp_path, seed: int = 1) -> bytes:
    from specq.testing.synthetic import write_spec_lite

    path = tmp_path / f"source-{seed}.fits"
    write_spec_lite(path, teff=5000, logg=4, fe_h=0, v_r=0, snr=30, seed=seed)
    return path.read_bytes()


def _ledger(env: dict) -> dict[str, int]:
    """What the watch process sent, from the ledger: spectrum key → times sent."""
    import sqlalchemy as sa

    from workers.store import ResultStore

    store = ResultStore(env["SPECQ_DATABASE_URL"]).create()
    with store.engine.connect() as conn:
        return dict(conn.execute(sa.select(store.sent_refs.c.spectrum_key, store.sent_refs.c.sends)).all())


def _incomplete(state) -> list[str]:
    import sqlite3

    db = sqlite3.connect(state / "watch.sqlite")
    try:
        return [r[0] for r in db.execute("select path from incomplete")]
    finally:
        db.close()


@pytest.mark.integration
def test_a_file_written_in_two_parts_is_sent_once_whole(tmp_path, watch_process):
    root = tmp_path / "data"
    (root / "night1").mkdir(parents=True)
    content = _spectrum_bytes(tmp_path)
    watch = watch_process(root)
    target = root / "night1" / "spec-1-60000-1.fits"
    with open(target, "wb") as fh:  # the first part, closed: as scp or an instrument's writer can
        fh.write(content[: len(content) // 2])
    from conftest import wait_for

    wait_for(lambda: _incomplete(tmp_path / "state") == ["night1/spec-1-60000-1.fits"], 30, 0.1,
             what="the half file judged incomplete", on_fail=watch.text)
    time.sleep(8)  # the rest arrives 8 s later (the case under test, not a wait for the watcher)
    assert "sent night1/spec-1-60000-1.fits" not in watch.text() and _ledger(watch.env) == {}
    with open(target, "ab") as fh:
        fh.write(content[len(content) // 2:])
    watch.wait_log("sent night1/spec-1-60000-1.fits")
    assert _ledger(watch.env) == {"night1/spec-1-60000-1.fits:1:0": 1}
    assert _incomplete(tmp_path / "state") == []


@pytest.mark.integration
def test_temporary_names_wait_for_their_rename_and_a_replaced_file_is_sent_again(tmp_path, watch_process):
    root = tmp_path / "data"
    (root / "night1").mkdir(parents=True)
    watch = watch_process(root)
    first, second = _spectrum_bytes(tmp_path, 1), _spectrum_bytes(tmp_path, 2)
    rsync_tmp = root / "night1" / ".spec-2-60000-2.fits.Xy12Ab"  # rsync's temporary name
    part = root / "night1" / "spec-3-60000-3.fits.part"
    rsync_tmp.write_bytes(first)
    part.write_bytes(first)
    time.sleep(3)  # three settle times and six scans: were they candidates, they would be sent
    assert "sent " not in watch.text() and _ledger(watch.env) == {}
    os.replace(rsync_tmp, root / "night1" / "spec-2-60000-2.fits")
    os.replace(part, root / "night1" / "spec-3-60000-3.fits")
    watch.wait_log("sent night1/spec-2-60000-2.fits")
    watch.wait_log("sent night1/spec-3-60000-3.fits")
    # Replaced by a new version (a new inode, the same size): sent again, once.
    replacement = root / "night1" / ".spec-2-60000-2.fits.new"
    replacement.write_bytes(second)
    os.replace(replacement, root / "night1" / "spec-2-60000-2.fits")
    watch.wait_log("sent night1/spec-2-60000-2.fits again")
    time.sleep(2)  # scans after the resend: it is not sent a third time
    assert _ledger(watch.env) == {"night1/spec-2-60000-2.fits:1:0": 2, "night1/spec-3-60000-3.fits:1:0": 1}
    assert watch.text().count("sent night1/spec-3-60000-3.fits") == 1


@pytest.mark.integration
def test_a_long_incomplete_file_is_reported_and_watch_state_survives_a_restart(tmp_path, watch_process):
    import subprocess
    import sys

    from conftest import ROOT

    root = tmp_path / "data"
    (root / "night1").mkdir(parents=True)
    content = _spectrum_bytes(tmp_path)
    (root / "night1" / "spec-1-60000-1.fits").write_bytes(content)
    watch = watch_process(root, "--report-incomplete-after", "2")
    watch.wait_log("sent night1/spec-1-60000-1.fits")
    (root / "night1" / "spec-4-60000-4.fits").write_bytes(content[:5000])  # never finished
    watch.wait_log("night1/spec-4-60000-4.fits: still incomplete after")
    status = subprocess.run([sys.executable, "-m", "specq.cli", "status"], env=watch.env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert "watch: night1/spec-4-60000-4.fits incomplete for" in status.stdout, status.stdout + status.stderr
    watch.stop()
    # Arrived while watch was down: sent when it starts again; what was sent is not sent twice.
    (root / "night1" / "spec-5-60000-5.fits").write_bytes(content)
    again = watch_process(root, "--report-incomplete-after", "2")
    again.wait_log("sent night1/spec-5-60000-5.fits")
    (root / "night1" / "spec-4-60000-4.fits").write_bytes(content)  # finished at last
    again.wait_log("sent night1/spec-4-60000-4.fits")
    assert "sent night1/spec-1-60000-1.fits" not in again.text()
    assert set(_ledger(again.env)) == {f"night1/spec-{i}-60000-{i}.fits:1:0" for i in (1, 4, 5)}


def test_polling_reports_a_rename_as_delete_and_create_and_both_are_handled(tmp_path):
    settings = _settings(tmp_path)
    rec = RecordingSubmit()
    content = _spectrum_bytes(tmp_path)
    w = Watcher([settings.data_root], "bossnet", settings, poll_interval=0.2, settle=0.5, events="poll",
                submit=rec)
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(stop,), daemon=True)
    thread.start()
    try:
        old = settings.data_root / "night1" / "spec-7-60000-7.fits"
        old.write_bytes(content[:4000])  # incomplete under its first name
        deadline = time.monotonic() + 10
        while "night1/spec-7-60000-7.fits" not in w.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "night1/spec-7-60000-7.fits" in w.pending
        new = settings.data_root / "night1" / "spec-8-60000-8.fits"
        os.replace(old, new)  # polling sees: delete old, create new
        new.write_bytes(content)  # and the new name completes
        deadline = time.monotonic() + 10
        while not rec.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1)
    finally:
        stop.set()
        thread.join(10)
    assert rec.sent == ["night1/spec-8-60000-8.fits"]
    assert "night1/spec-7-60000-7.fits" not in w.pending  # the old name's wait ended with its delete


def test_a_file_is_whole_when_its_headers_end_its_sizes_fit_and_its_gzip_stream_ends(tmp_path):
    import gzip

    from workers.readers.completeness import why_incomplete

    content = _spectrum_bytes(tmp_path)
    cases = {
        "whole.fits": content,
        "whole.fits.gz": gzip.compress(content),
        "empty.fits": b"",
        "header-cut.fits": content[:1000],  # inside the primary header: no END card yet
        "data-short.fits": content[:-2880],  # every header read, the last data block missing
        "stream-cut.fits.gz": gzip.compress(content)[:-100],  # the gzip stream does not end
        "not-fits.fits": b"plain text, whole, and never FITS\n" * 100,  # whole but wrong: its row says why
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    why = {name: why_incomplete(tmp_path / name) for name in cases}
    assert why["whole.fits"] is None and why["whole.fits.gz"] is None and why["not-fits.fits"] is None, why
    assert all(why[name] for name in ("empty.fits", "header-cut.fits", "data-short.fits", "stream-cut.fits.gz")), why


def _producer_submit(paths, pipelines, settings=None, options=None):
    """The watcher's own producer, with messages built and not sent."""
    from tasks.producer import submit

    return submit(paths, pipelines, settings=settings, options=options, celery_app=_NoSend(), wait_unreadable=True)


def test_a_file_the_producer_refuses_is_reported_once_and_holds_back_no_other(tmp_path, caplog):
    """A path too long for the store's key is refused by the producer: the other files of
    the same scan are sent, and the refused one is said once, not tried at every scan."""
    settings = _settings(tmp_path)
    content = _spectrum_bytes(tmp_path)
    deep = settings.data_root.joinpath(*[f"{'d' * 90}{i}" for i in range(6)])  # > 480 characters
    deep.mkdir(parents=True)
    (deep / "spec-1-60000-1.fits").write_bytes(content)
    (settings.data_root / "night1" / "spec-2-60000-2.fits").write_bytes(content)
    w = Watcher([settings.data_root], "bossnet", settings, settle=0.0, events=False, submit=_producer_submit)
    with caplog.at_level(logging.INFO, logger="specq.watch"):
        assert w.scan() == 1
        assert w.scan() == 0
    w.close()
    again = Watcher([settings.data_root], "bossnet", settings, settle=0.0, events=False, submit=_producer_submit)
    assert [r[0] for r in again.record.rows()] == ["night1/spec-2-60000-2.fits"]
    again.close()
    errors = [r.getMessage() for r in caplog.records if r.name == "specq.watch" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "spec-1-60000-1.fits" in errors[0] and "limited to 480" in errors[0], errors


def test_a_refusal_that_passes_is_sent_at_a_later_try_and_a_lasting_one_is_said_once(tmp_path, caplog):
    """A file refused while its folder could not be examined is not lost: it is tried again."""
    from tasks.producer import InputError
    from tasks.watch import REFUSED_RETRY_S

    settings = _settings(tmp_path)
    (settings.data_root / "night1" / "spec-1-60000-1.fits").write_bytes(_spectrum_bytes(tmp_path))
    recording = RecordingSubmit()
    refusals = ["cannot be examined: Stale file handle"] * 2

    def submit(paths, pipelines, settings=None, options=None):
        if refusals:
            raise InputError(f"{paths[0]}: {refusals.pop()}")
        return recording(paths, pipelines, settings=settings, options=options)

    w = Watcher([settings.data_root], "bossnet", settings, settle=0.0, events=False, submit=submit)
    with caplog.at_level(logging.DEBUG, logger="specq.watch"):
        assert w.scan(now=1000.0) == 0
        assert w.scan(now=1001.0) == 0 and len(refusals) == 1  # not due: not asked again
        assert w.scan(now=1000.0 + REFUSED_RETRY_S) == 0 and refusals == []  # due, refused again
        assert w.scan(now=1000.0 + 2 * REFUSED_RETRY_S) == 1
    w.close()
    assert recording.sent == ["night1/spec-1-60000-1.fits"]
    errors = [r.getMessage() for r in caplog.records if r.name == "specq.watch" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "Stale file handle" in errors[0], errors


def test_a_second_watcher_on_the_same_record_is_refused(tmp_path):
    """Two watchers that share a record would each send every file: the second one refuses to
    start, and starts once the first has stopped."""
    from workers.settings import SettingsError

    settings = _settings(tmp_path)
    first = Watcher([settings.data_root], "bossnet", settings, settle=0.0, events=False, submit=RecordingSubmit())
    with pytest.raises(SettingsError, match="another specq watch"):
        Watcher([settings.data_root / "night1"], "bossnet", settings, settle=0.0, events=False,
                submit=RecordingSubmit())
    first.close()
    Watcher([settings.data_root], "bossnet", settings, settle=0.0, events=False, submit=RecordingSubmit()).close()


def test_an_incomplete_file_deleted_while_watch_was_down_is_no_longer_reported(tmp_path):
    """``specq status`` lists files a watcher waits for: not one deleted while it was stopped."""
    from tasks.watch import long_incomplete

    settings = _settings(tmp_path)
    half = settings.data_root / "night1" / "spec-4-60000-4.fits"
    half.write_bytes(_spectrum_bytes(tmp_path)[:5000])
    w = Watcher([settings.data_root], "bossnet", settings, settle=0.0, events=False, submit=RecordingSubmit(),
                incomplete_after=0.0)
    assert w.scan() == 0
    w.close()
    assert [f["path"] for f in long_incomplete(settings)] == ["night1/spec-4-60000-4.fits"]
    half.unlink()
    again = Watcher([settings.data_root], "bossnet", settings, settle=0.0, events=False, submit=RecordingSubmit())
    assert again.scan() == 0
    again.close()
    assert long_incomplete(settings) == [] and _incomplete(tmp_path / "state") == []


def test_a_first_ctrl_c_asks_watch_to_stop_and_a_second_stops_it_at_once():
    import signal
    import threading

    from tasks.watch import stop_on_signals

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop = threading.Event()
        stop_on_signals(stop)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.wait(5)  # no KeyboardInterrupt: the scan under way goes on and records what it sent
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler runs at the next instruction; the sleep only bounds it
        term = threading.Event()
        stop_on_signals(term)
        os.kill(os.getpid(), signal.SIGTERM)
        assert term.wait(5)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.mark.integration
def test_ctrl_c_stops_watch_after_its_scan_and_a_restart_sends_nothing_again(tmp_path, watch_process):
    """The first Ctrl-C lets the scan under way record what it sent, then stops with the summary."""
    import signal

    root = tmp_path / "data"
    (root / "night1").mkdir(parents=True)
    (root / "night1" / "spec-1-60000-1.fits").write_bytes(_spectrum_bytes(tmp_path))
    watch = watch_process(root)
    watch.wait_log("sent night1/spec-1-60000-1.fits")
    watch.proc.send_signal(signal.SIGINT)
    assert watch.proc.wait(30) == 0, watch.text()
    assert "watch stopped after" in watch.text() and "Traceback" not in watch.text(), watch.text()
    again = watch_process(root)  # the record is free again, and holds the file
    (root / "night1" / "spec-2-60000-2.fits").write_bytes(_spectrum_bytes(tmp_path, 2))
    again.wait_log("sent night1/spec-2-60000-2.fits")
    assert "spec-1-60000-1" not in again.text()
    assert _ledger(again.env) == {"night1/spec-1-60000-1.fits:1:0": 1, "night1/spec-2-60000-2.fits:1:0": 1}
