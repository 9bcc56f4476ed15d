"""A result database, a broker or an output place that fails a command ends it with one line, not a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from specq.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["results", "summary"], ["dead-letters", "list"], ["reconcile", "--dry-run"],
                                     ["status", "--unfinished"]])
def test_a_store_file_that_is_not_sqlite_is_one_line(tmp_path, monkeypatch, capsys, command):
    not_a_database = tmp_path / "results.sqlite"
    not_a_database.write_text("these are notes, not a database\n")
    monkeypatch.setenv("SPECQ_DATABASE_URL", f"sqlite:///{not_a_database}")
    monkeypatch.setenv("SPECQ_STATE_DIR", str(tmp_path / "state"))
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err == (f"specq: error: the result database sqlite:///{not_a_database}: file is not a database "
                   f"(SPECQ_DATABASE_URL)\n")


def test_requeue_with_the_broker_away_is_one_line_and_keeps_the_dead_letter(tmp_path):
    from workers.store import ResultStore

    url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    store = ResultStore(url)
    store.create()
    store.dead_letter("t-1", "bossnet", [{"path": "a.fits", "hdu": 1, "row": 0}], "kept killing its worker", 3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECQ_")}
    env.update(SPECQ_DATABASE_URL=url, SPECQ_BROKER_URL="redis://127.0.0.1:1/3",  # nothing listens on port 1
               SPECQ_STATE_DIR=str(tmp_path / "state"), SPECQ_CONFIG=os.devnull, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "specq.cli", "dead-letters", "requeue", "--all"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("specq: error: cannot reach the broker redis://127.0.0.1:1/3"), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert not ResultStore(url).dead_letter_rows()[0]["requeued"]  # still waiting to be sent again


def _empty_store(tmp_path, monkeypatch) -> None:
    from workers.store import ResultStore

    url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    ResultStore(url).create()
    monkeypatch.setenv("SPECQ_DATABASE_URL", url)
    monkeypatch.setenv("SPECQ_STATE_DIR", str(tmp_path / "state"))


def test_export_refuses_an_output_it_cannot_write_before_reading_rows(tmp_path, monkeypatch, capsys):
    _empty_store(tmp_path, monkeypatch)
    (tmp_path / "a-folder.fits").mkdir()
    (tmp_path / "a-file").write_text("")
    for output, words in ((tmp_path / "a-folder.fits", "a folder; name a file in it"),
                          (tmp_path / "a-file" / "r.fits", f"no folder {tmp_path / 'a-file'} to write it in"),
                          (tmp_path / "missing" / "r.fits", f"no folder {tmp_path / 'missing'} to write it in")):
        assert main(["results", "export", "--pipeline", "bossnet", "-o", str(output)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[-1] == f"specq: error: --output {output}: {words}"
    assert not (tmp_path / "missing").exists()


def test_plot_refuses_a_file_as_its_folder(tmp_path, monkeypatch, capsys):
    _empty_store(tmp_path, monkeypatch)
    (tmp_path / "a-file").write_text("")
    assert main(["results", "plot", "--pipeline", "bossnet", "-o", str(tmp_path / "a-file")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"specq: error: --output-dir {tmp_path / 'a-file'}: a file, not a folder"
