"""The streaming producer: complete files only, each file once, across restarts."""
from __future__ import annotations

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
