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


def check_writable(paths: Iterable[Path]) -> None:
    """Each output file can be written: its folder exists and takes a new file, and the file,
    if there, may be replaced. Checked by writing (root may write where the mode says not)."""
    for path in paths:
        folder = Path(path).expanduser().parent
        if not folder.is_dir():
            raise UserMistake(f"--output {path}: no folder {folder} to write it in")
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".specq-write-check-"):
                pass
        except OSError as exc:
            raise UserMistake(f"--output {path}: cannot write in {folder}: {exc.strerror or exc}") from None
        if Path(path).exists() and not os.access(path, os.W_OK):
            raise UserMistake(f"--output {path}: the file exists and cannot be replaced (permission denied)")


def read_input_table(path: str):
    """``specq results plot --input FILE``: the exported table, or a UserMistake naming the file."""
    from workers.export import read_results

    if not Path(path).is_file():
        raise UserMistake(f"--input {path}: no such file")
    try:
        return read_results(path)
    except (OSError, ValueError, KeyError) as exc:
        raise UserMistake(f"--input {path}: not a table specq can read ({exc})") from None
