"""Ctrl-C and SIGTERM with real processes: a worker, `celery -A tasks worker`, `specq run`.

A worker's first SIGINT/SIGTERM finishes the running message and exits; the second stops
it at once, writes nothing for that message (no failure row over a good one), and the
message is delivered again. `specq run` interrupted keeps the rows already done.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, producer_app, say, wait_for, worker_env

pytestmark = pytest.mark.integration

VISIBILITY_TIMEOUT = 8
SLOW_DRAWS = 40  # 8 spectra with this many noise draws: seconds of work; the signal comes within ms of its log line
FIRST_SIGNAL_SEEN = {signal.SIGINT: "Hitting Ctrl+C again will initiate cold shutdown",
                     signal.SIGTERM: "worker: Warm shutdown (MainProcess)"}


class Worker:
    """``specq worker`` or ``celery -A tasks worker -P solo`` in its own session, logging to a file."""

    def __init__(self, command: str, env: dict, log_path: Path, name: str):
        if command == "specq":
            cmd = [sys.executable, "-m", "specq.cli", "worker", "-Q", "gpu", "-n", f"{name}@%h"]
        else:
            cmd = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", "gpu", "-P", "solo", "-l", "INFO",
                   "-n", f"{name}@%h", "--without-mingle", "--without-gossip"]
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 180) -> None:
        wait_for(lambda: needle in self.text() or self.proc.poll() is not None, timeout, 0.05,
                 what=f"{needle!r} in the worker's log", on_fail=lambda: self.text()[-3000:])
        assert needle in self.text(), f"the worker exited before {needle!r}:\n{self.text()[-3000:]}"

    def send(self, sig) -> None:
        if sig == signal.SIGINT:  # Ctrl-C: a terminal signals the whole foreground group, readers too
            os.killpg(self.proc.pid, sig)
        else:
            os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not exit within {timeout} s:\n{self.text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


@pytest.fixture
def workers(tmp_path):
    started: list[Worker] = []

    def start(command: str, env: dict) -> Worker:
        w = Worker(command, env, tmp_path / f"worker{len(started)}.log", f"w{len(started)}")
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def _setup(tmp_path, monkeypatch, redis_url, n=8):
    from specq.testing.synthetic import make_dataset

    root = tmp_path / "data"
    truth = make_dataset(root, n_boss=n, n_apogee=0, seed=5, formats=("spec-lite",))
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", redis_url,
                     SPECQ_VISIBILITY_TIMEOUT=VISIBILITY_TIMEOUT, SPECQ_DEVICE="cpu")
    app, settings = producer_app(env, monkeypatch)
    return sorted(set(truth["path"])), env, settings


def _queued(settings, queue="gpu") -> int:
    import redis

    return redis.Redis.from_url(settings.broker).llen(queue)


@pytest.mark.parametrize("command,sig", [("specq", signal.SIGINT), ("celery", signal.SIGTERM)])
def test_first_signal_finishes_the_message_then_exits(tmp_path, monkeypatch, clean_redis, workers, command, sig):
    files, env, settings = _setup(tmp_path, monkeypatch, clean_redis)
    from tasks.producer import submit
    from workers.store import ResultStore

    running = submit(files, "bossnet", chunk_size=8, options={"draws": SLOW_DRAWS}, settings=settings)
    waiting = submit(files, "bossnet", chunk_size=8, options={"draws": 2}, settings=settings)
    worker = workers(command, env)
    worker.wait_log("loaded bossnet")  # inside the first message: the model is built for it
    worker.send(sig)
    rc = worker.wait_exit(240)
    rows = ResultStore(settings.database).rows("bossnet")
    assert {r["task_id"] for r in rows} == set(running.task_ids["bossnet"]), worker.text()[-3000:]
    assert len(rows) == 8 and all(r["error"] is None and r["teff"] is not None for r in rows)
    assert waiting.task_ids["bossnet"][0] not in worker.text()  # never taken: it waits in the queue
    assert _queued(settings) == 1
    assert "Warm shutdown" in worker.text() and "Cold shutdown" not in worker.text()
    assert rc == 0, worker.text()[-2000:]


@pytest.mark.parametrize("command,sig", [("specq", signal.SIGINT), ("celery", signal.SIGTERM)])
def test_second_signal_stops_at_once_and_the_message_comes_back(tmp_path, monkeypatch, clean_redis, workers,
                                                                command, sig):
    files, env, settings = _setup(tmp_path, monkeypatch, clean_redis)
    from tasks.producer import submit
    from workers.store import ResultStore

    store = ResultStore(settings.database)
    first = submit(files, "bossnet", chunk_size=8, options={"draws": 2}, settings=settings)
    worker = workers(command, env)
    wait_for(lambda: store.count(task_ids=first.task_ids["bossnet"]) == 8, 180, what="the good rows",
             on_fail=lambda: worker.text()[-3000:])
    good = {r["spectrum_key"]: r for r in store.rows("bossnet")}
    # The same spectra again (a re-enqueue), interrupted twice in the middle of the batch.
    again = submit(files, "bossnet", chunk_size=8, options={"draws": SLOW_DRAWS}, settings=settings)
    again_id = again.task_ids["bossnet"][0]
    worker.wait_log(f"Task specq.bossnet[{again_id}] received")
    worker.send(sig)
    worker.wait_log(FIRST_SIGNAL_SEEN[sig])  # two signals at once would arrive as one
    worker.send(sig)
    t0 = time.monotonic()
    worker.wait_exit(60)
    say(f"[{command} {sig.name} x2] worker exited {time.monotonic() - t0:.1f} s after the second signal")
    log = worker.text()
    # Said plainly, once, without a traceback; and the message is in the queue again.
    assert f"{again_id}: cold shutdown (a second Ctrl-C or SIGTERM): message back to the queue, nothing written" \
        in log and "Traceback" not in log and "kill_job" not in log, log[-3000:]
    assert "splitting" not in log and "unexpected error" not in log
    assert _queued(settings) == 1
    # Nothing written for the interrupted message: the good rows are untouched.
    assert {r["spectrum_key"]: (r["task_id"], r["teff"], r["error"]) for r in store.rows("bossnet")} == \
        {k: (r["task_id"], r["teff"], None) for k, r in good.items()}
    assert all(r["teff"] is not None for r in good.values())

    # Delivered again to the next worker (on Redis, within the visibility timeout at most).
    restarted = time.monotonic()
    second = workers(command, env)
    second.wait_log(f"Task specq.bossnet[{again_id}] received", timeout=VISIBILITY_TIMEOUT + 120)
    redelivered_s = time.monotonic() - restarted
    wait_for(lambda: store.count(task_ids=[again_id]) == 8, 240, what="the redelivered message's rows",
             on_fail=lambda: second.text()[-3000:])
    rows = store.rows("bossnet")
    assert len(rows) == 8 and all(r["error"] is None and r["teff"] is not None for r in rows)
    say(f"[{command} {sig.name} x2] redelivered {redelivered_s:.1f} s after the second worker started")


# -- specq run ---------------------------------------------------------------------------
def _specq_run(tmp_path, files, draws, out):
    """``specq run`` with stderr on a terminal (a pseudo-terminal here): where a user presses Ctrl-C,
    and where the progress bar is drawn. Returns the process and the file that collects stderr."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    cmd = [sys.executable, "-m", "specq.cli", "run", "--device", "cpu", "--draws", str(draws), "--batch-size", "8",
           "-o", str(out), *files]
    # One reader: the batches are read in order and come out one by one, so a signal sent
    # after the first lands before the last. With several, a batch whose file is read late
    # comes out with every batch computed after it, at once.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPECQ_READERS": "1"}
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # room for the bar
    # As from a user's shell: Ctrl-C is not ignored. A suite started in the background by a
    # shell without job control (nohup, `cmd &` in a script) inherits SIGINT ignored, and
    # Python keeps an ignored SIGINT ignored: restore the default before the run starts.
    proc = subprocess.Popen(cmd, cwd=tmp_path / "data", env=env, stdout=subprocess.PIPE, stderr=terminal,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(terminal)
    err_path = tmp_path / "run.err"
    err_path.write_bytes(b"")

    def collect():  # until the process closes the terminal
        with open(err_path, "ab") as sink:
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: no writer left
                    break
                if not chunk:
                    break
                sink.write(chunk)
                sink.flush()
        os.close(master)

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    proc.reader = reader
    return proc, err_path


def _finish(proc) -> int:
    rc = proc.wait(120)
    proc.reader.join(10)
    return rc


def _progress(err_path: Path) -> int:
    """Spectra done, from the last progress bar update (-1 before the bar appears)."""
    counts = re.findall(r"\| *(\d+)/\d+ \[", err_path.read_text(errors="replace"))
    return int(counts[-1]) if counts else -1


def _lines(err_path: Path) -> list[str]:
    """stderr's lines, as the terminal showed them last (progress bar redraws folded)."""
    text = err_path.read_text(errors="replace").replace("\r\n", "\n")
    return [line.split("\r")[-1].strip() for line in text.split("\n") if line.split("\r")[-1].strip()]


def test_ctrl_c_in_specq_run_writes_the_rows_already_done(tmp_path):
    from astropy.table import Table
    from specq.testing.synthetic import make_dataset

    truth = make_dataset(tmp_path / "data", n_boss=16, n_apogee=0, seed=7, formats=("spec-lite",))
    files = sorted(set(truth["path"]))
    out = tmp_path / "partial.csv"
    proc, err = _specq_run(tmp_path, files, 100, out)  # batches of 1, 2, 4, 8, 1 spectra
    wait_for(lambda: 1 <= _progress(err) or proc.poll() is not None, 180, 0.05, what="the first batch",
             on_fail=lambda: err.read_text()[-2000:])
    proc.send_signal(signal.SIGINT)
    assert _finish(proc) == 130, err.read_text()[-2000:]
    last = _lines(err)[-1]
    written = re.fullmatch(r"specq run: interrupted: wrote the (\d+) of 16 bossnet spectra already done to (.+)", last)
    assert written and Path(written.group(2)) == out, last
    table = Table.read(out, format="ascii.csv")
    assert 1 <= len(table) == int(written.group(1)) < 16
    assert {str(v) for v in table["flag_bad"]} == {"False"}


def test_ctrl_c_in_specq_run_before_any_spectrum_says_nothing_was_written(tmp_path):
    from specq.testing.synthetic import make_dataset

    truth = make_dataset(tmp_path / "data", n_boss=2, n_apogee=0, seed=7, formats=("spec-lite",))
    out = tmp_path / "none.csv"
    proc, err = _specq_run(tmp_path, sorted(set(truth["path"])), 3000, out)  # the first spectrum takes seconds
    wait_for(lambda: _progress(err) == 0 or proc.poll() is not None, 180, 0.05, what="the progress bar",
             on_fail=lambda: err.read_text()[-2000:])
    proc.send_signal(signal.SIGINT)
    assert _finish(proc) == 130, err.read_text()[-2000:]
    assert _lines(err)[-1] == \
        f"specq run: interrupted before any bossnet spectrum was done: nothing written to {out}"
    assert not out.exists()


def test_run_with_gzip_names_the_file_it_writes(tmp_path, monkeypatch, capsys):
    from specq.cli import main
    from specq.testing.synthetic import make_dataset

    truth = make_dataset(tmp_path / "data", n_boss=1, n_apogee=0, seed=7, formats=("spec-lite",))
    monkeypatch.chdir(tmp_path / "data")
    rc = main(["run", "--device", "cpu", "--draws", "2", "--quiet", "--gzip", "-o", str(tmp_path / "one.fits"),
               *sorted(set(truth["path"]))])
    assert rc == 0
    assert f"→ {tmp_path / 'one.fits.gz'}" in capsys.readouterr().out
    assert (tmp_path / "one.fits.gz").exists() and not (tmp_path / "one.fits").exists()


def test_ctrl_c_while_the_output_is_written_writes_every_row_done(tmp_path, monkeypatch, capsys):
    """A Ctrl-C after the last batch, while the file is written: the file is written again,
    whole, and the run says so (the signal is raised where the write starts)."""
    from astropy.table import Table
    from specq.cli import main
    from specq.cli import run as run_command
    from specq.testing.synthetic import make_dataset

    truth = make_dataset(tmp_path / "data", n_boss=3, n_apogee=0, seed=7, formats=("spec-lite",))
    out = tmp_path / "all.csv"
    write = run_command._write_run_output
    writes = []

    def interrupted_first_time(*args, **kwargs):
        writes.append(args[2])
        if len(writes) == 1:
            raise KeyboardInterrupt
        return write(*args, **kwargs)

    monkeypatch.setattr(run_command, "_write_run_output", interrupted_first_time)
    monkeypatch.chdir(tmp_path / "data")
    rc = main(["run", "--device", "cpu", "--draws", "2", "--quiet", "-o", str(out), *sorted(set(truth["path"]))])
    assert rc == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"specq run: interrupted: wrote the 3 of 3 bossnet spectra already done to {out}"
    assert writes == [out, out]
    table = Table.read(out, format="ascii.csv")
    assert len(table) == 3 and {str(v) for v in table["flag_bad"]} == {"False"}
