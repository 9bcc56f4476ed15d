"""Checks of what a user gave, made before any work: a mistake is one line, exit status 2.

The command line catches :class:`UserMistake` once and prints its message.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable


class UserMistake(Exception):
    """Something the user gave that cannot work (the message says what, and where)."""


def try_writing_in(folder: Path) -> None:
    """Make and remove a file in ``folder``: OSError where it takes none (root may write where
    the mode says not, so only a write tells)."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".specq-write-check-"):
        pass


def check_writable(paths: Iterable[Path]) -> None:
    """Each output file can be written: its folder exists and takes a new file, and the file,
    if there, may be replaced. Checked by writing (root may write where the mode says not)."""
    for path in paths:
        folder = Path(path).expanduser().parent
        if Path(path).expanduser().is_dir():
            raise UserMistake(f"--output {path}: a folder; name a file in it")
        if not folder.is_dir():
            raise UserMistake(f"--output {path}: no folder {folder} to write it in")
        try:
            try_writing_in(folder)
        except OSError as exc:
            raise UserMistake(f"--output {path}: cannot write in {folder}: {exc.strerror or exc}") from None
        if Path(path).exists() and not os.access(path, os.W_OK):
            raise UserMistake(f"--output {path}: the file exists and cannot be replaced (permission denied)")


def check_not_inputs(outputs: Iterable[Path], inputs: Iterable[str | os.PathLike]) -> None:
    """No output file is one of the input files (by name, link or another path to it):
    writing the results there would destroy the spectra they came from."""
    files = {}
    for file in inputs:
        try:
            st = os.stat(file)
        except (OSError, ValueError):  # gone, or a name the OS refuses: its row says why
            continue
        files[(st.st_dev, st.st_ino)] = file
    for path in outputs:
        try:
            st = os.stat(Path(path).expanduser())
        except (OSError, ValueError):
            continue
        given = files.get((st.st_dev, st.st_ino))
        if given is not None:
            raise UserMistake(f"--output {path}: that is the input file {given}; writing the results there "
                              f"would overwrite its spectra")


def check_device(device: str, option: str = "--device") -> None:
    """A torch device this machine has: ``cpu``, ``cuda`` or ``cuda:N`` (else UserMistake).

    ``option`` names where the device came from, for the message.
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserMistake(f"{option} {device}: not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise UserMistake(f"{option} {device}: this torch ({torch.__version__}) was built without CUDA")
        if not torch.cuda.is_available():
            raise UserMistake(f"{option} {device}: no CUDA device is visible (driver, CUDA_VISIBLE_DEVICES?)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserMistake(f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise UserMistake(f"{option} {device}: specq runs on cpu or cuda")


def utc_time(text: str):
    """An ISO date or date-time (``2025-03-14``, ``2025-03-14T22:00``) as a UTC datetime;
    naive input is UTC. ValueError with a line for the user otherwise."""
    import datetime as dt

    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO date or time (e.g. 2025-03-14 or 2025-03-14T22:00)") from None
    return to_utc(moment)


def to_utc(moment):
    """A datetime in UTC; a naive one is taken as UTC."""
    import datetime as dt

    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment.astimezone(dt.timezone.utc)


def model_prefix(text: str) -> str:
    """A model filter (a sha256, a prefix of one, or ``unloaded``) as the store matches it:
    stripped, lower case. ValueError with a line for the user otherwise."""
    value = text.strip().lower()
    if not value or not all(c in "0123456789abcdef" for c in value) and value != "unloaded":
        raise ValueError(f"{text!r} is not a sha256 or a prefix of one (hex digits)")
    return value


def check_period(since, until, since_name: str = "--since ", until_name: str = "--until ") -> None:
    """ValueError naming both where ``until`` is not after ``since`` (rows are written at or
    after ``since`` and before ``until``: none could match). Naive times are UTC.

    Each name is written just before its value (``"--since "``, ``"since="``).
    """
    if since is None or until is None:
        return
    since, until = to_utc(since), to_utc(until)
    if until <= since:
        raise ValueError(f"{until_name}{until.isoformat()} is not after {since_name}{since.isoformat()}: "
                         f"no row is written at or after the one and before the other")


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (SQLAlchemy's: of the driver's own error)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def missing_sqlite_store(url: str) -> str | None:
    """The file of a SQLite store URL that does not exist yet (opening it would make an empty
    store, where every later read finds no rows), else None."""
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return None  # opening it says what is wrong
    file = parsed.database if parsed.drivername.startswith("sqlite") else None
    try:
        return file if file and file != ":memory:" and not Path(file).expanduser().exists() else None
    except OSError:  # a folder on the way that may not be searched: opening it says so
        return None


def demo_store_hint(settings, setting: str = "SPECQ_DATABASE_URL") -> str:
    """Where ``specq demo`` left its results, to end a message about the default store
    being missing or empty ("" when a store was chosen, or there is no demo store)."""
    if settings.database_url:
        return ""
    demo = Path(settings.state_dir) / "demo" / "results.sqlite"
    if not demo.is_file():
        return ""
    return f"; the demo's results are in {demo} ({setting}='sqlite:///{demo}')"


def read_input_table(path: str):
    """``specq results plot --input FILE``: the exported table, or a UserMistake naming the file."""
    from workers.export import read_results

    if not Path(path).is_file():
        raise UserMistake(f"--input {path}: no such file")
    try:
        return read_results(path)
    except (OSError, ValueError, KeyError) as exc:
        raise UserMistake(f"--input {path}: not a table specq can read ({one_line(exc)})") from None
