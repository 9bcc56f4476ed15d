"""A command that cannot work ends with one line, not a traceback: a result database, a broker or an
output place that fails it, or an option value out of range."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from specq.cli import main

ROOT = Path(__file__).resolve().parents[1]


# in process: commands that read their settings afresh (reconcile keeps the queue app's, made once a process)
@pytest.mark.parametrize("command", [["results", "summary"], ["dead-letters", "list"], ["status", "--unfinished"]])
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
                          (tmp_path / "a-file" / "r.fits", "cannot make its folder: File exists")):
        assert main(["results", "export", "--pipeline", "bossnet", "-o", str(output)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[-1] == f"specq: error: --output {output}: {words}"
    # a folder not there yet is made, as before: with --gzip the file written is the .gz one
    assert main(["results", "export", "--pipeline", "bossnet", "--gzip", "-o", str(tmp_path / "new" / "r.fits")]) == 0
    assert (tmp_path / "new" / "r.fits.gz").is_file()


def test_plot_refuses_a_file_as_its_folder(tmp_path, monkeypatch, capsys):
    _empty_store(tmp_path, monkeypatch)
    (tmp_path / "a-file").write_text("")
    assert main(["results", "plot", "--pipeline", "bossnet", "-o", str(tmp_path / "a-file")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"specq: error: --output-dir {tmp_path / 'a-file'}: a file, not a folder"


@pytest.mark.parametrize("argv, words", [
    (["worker", "--loglevel", "loud"], "'loud' is not a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL, FATAL)"),
    (["worker", "--concurrency", "-1"], "must be at least 1, got -1"),
    (["reconcile", "--older-than", "99999999999d"], "'99999999999d' is longer than ten years"),
    (["dead-letters", "requeue", str(2**70)], f"no dead letter has the id {2**70}"),
    (["worker", "--queues", " "], "argument --queues/-Q: ' ': a queue name is blank"),
    (["worker", "--queues", "gpu,"], "argument --queues/-Q: 'gpu,': a queue name is blank"),
    (["watch", "incoming", "--max-seconds", "nan"], "argument --max-seconds: not a finite number of seconds: 'nan'"),
    (["watch", "incoming", "--max-seconds", "inf"], "argument --max-seconds: not a finite number of seconds: 'inf'"),
    (["watch", "incoming", "--max-seconds", "-5"], "argument --max-seconds: must be more than 0, got -5"),
    (["status", "--timeout", "inf"], "argument --timeout: not a finite number of seconds: 'inf'"),
    (["watch", "incoming", "--settle", "nan"], "argument --settle: not a finite number of seconds: 'nan'"),
    (["watch", "incoming", "--settle", "-1"], "argument --settle: must be 0 or more, got -1"),
    (["enqueue", "spec.fits", "--draws", "1000000"], "argument --draws: must be at most 10000, got 1000000"),
])
def test_an_option_out_of_range_is_refused_by_the_parser(capsys, argv, words):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and words in err and err.count("\n") == 1, err


@pytest.mark.parametrize("command, subcommands", [
    ("results", "{export,plot,summary}"), ("weights", "{list,install,verify}"), ("dead-letters", "{list,requeue}")])
def test_a_command_without_its_subcommand_lists_them(capsys, command, subcommands):
    with pytest.raises(SystemExit) as stopped:
        main([command])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (f"specq {command}: error: the following arguments are required: "
                                       f"{subcommands} (see specq {command} --help)\n")


def test_a_worker_log_level_is_taken_in_any_case():
    from specq.cli import build_parser

    assert build_parser().parse_args(["worker", "-l", "warn"]).loglevel == "WARNING"
    assert build_parser().parse_args(["worker", "-l", "debug"]).loglevel == "DEBUG"


def test_an_empty_device_or_a_huge_visibility_timeout_is_one_line(tmp_path, monkeypatch, capsys):
    spectrum = tmp_path / "spec.fits"
    spectrum.write_bytes(b"")
    monkeypatch.setenv("SPECQ_STATE_DIR", str(tmp_path / "state"))
    assert main(["run", "--device", "", "-o", str(tmp_path / "out.csv"), str(spectrum)]) == 2
    assert capsys.readouterr().err == "specq: error: --device : not a device; use cpu, cuda or cuda:N\n"
    monkeypatch.setenv("SPECQ_VISIBILITY_TIMEOUT", str(10**14))
    assert main(["results", "summary"]) == 2
    assert "SPECQ_VISIBILITY_TIMEOUT must be from 1 to" in capsys.readouterr().err


def test_the_latency_bench_without_redis_is_one_line(capsys):
    assert main(["bench", "--latency", "--broker", "redis://127.0.0.1:1/3"]) == 2
    assert capsys.readouterr().err == ("specq bench: the latency benchmark needs Redis at redis://127.0.0.1:1/3 "
                                       "(--broker redis://HOST:PORT/DB)\n")


def test_config_values_are_read_as_their_variables_would_be(tmp_path, monkeypatch):
    from workers.settings import SettingsError, load_settings

    config = tmp_path / "specq.toml"
    monkeypatch.setenv("SPECQ_CONFIG", str(config))
    config.write_text('[specq]\nlanes = ["ordinary"]\nvisibility_timeout = 900\ndemo_weights = true\n')
    settings = load_settings()
    assert (settings.lanes, settings.visibility_timeout, settings.demo_weights) == ("ordinary", 900, True)
    config.write_text("[specq]\nlanes = {ordinary = 1}\n")
    with pytest.raises(SettingsError, match=rf"{config}: lanes: a dict is not a setting's value"):
        load_settings()
    config.write_text("[specq]\nbroker_url = 5\n")
    with pytest.raises(SettingsError, match="unknown broker scheme '5'"):
        load_settings()
    config.write_text('[specq]\nvisibility_timeout = 600.0\ndevice = ""\n')  # "" is unset, as in the environment
    settings = load_settings()
    assert (settings.visibility_timeout, settings.device) == (600, None)
    config.write_text("[specq.queues]\nbossnet = 'gpu'\n")
    with pytest.raises(SettingsError, match=r"unknown specq setting\(s\): queues"):
        load_settings()


@pytest.mark.parametrize("variable, value, words", [
    ("SPECQ_MAX_MESSAGE_REFS", "0", "SPECQ_MAX_MESSAGE_REFS must be at least 1, not 0"),
    ("SPECQ_MAX_MESSAGE_REFS", "abc", "SPECQ_MAX_MESSAGE_REFS must be a whole number, not 'abc'"),
    ("SPECQ_CHUNK_SIZE", "0", "SPECQ_CHUNK_SIZE must be at least 1, not 0"),
    ("SPECQ_CHUNK_SIZE", "-2", "SPECQ_CHUNK_SIZE must be at least 1, not -2"),
    ("SPECQ_BOSSNET_CHUNK_SIZE", "0", "SPECQ_BOSSNET_CHUNK_SIZE must be at least 1, not 0"),
    ("SPECQ_READERS", "0", "SPECQ_READERS must be at least 1, not 0"),
    ("SPECQ_BOSSNET_QUEUE", " ", "SPECQ_BOSSNET_QUEUE must name a queue, not ' '"),
])
def test_a_setting_that_would_do_no_work_is_refused_naming_it(monkeypatch, variable, value, words):
    from workers.settings import SettingsError, load_settings

    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value) == words


def test_a_queue_name_is_read_without_the_blanks_around_it(monkeypatch):
    from workers.settings import load_settings

    monkeypatch.setenv("SPECQ_BOSSNET_QUEUE", " gpu2 ")
    assert load_settings().queue_for("bossnet") == "gpu2"


def test_a_bad_value_in_the_config_file_names_the_file_and_its_key(tmp_path, monkeypatch):
    from workers.settings import SettingsError, load_settings

    config = tmp_path / "site.toml"
    monkeypatch.setenv("SPECQ_CONFIG", str(config))
    for line, start in (('chunk_size = "abc"', f"{config}: chunk_size must be a whole number, not 'abc'"),
                        ("max_message_refs = 0", f"{config}: max_message_refs must be at least 1, not 0"),
                        ("visibility_timeout = 0", f"{config}: visibility_timeout must be from 1 to"),
                        ('bossnet_queue = " "', f"{config}: bossnet_queue must name a queue, not ' '"),
                        ('data_root = "ftp://host/x"', f"{config}: data_root ftp://…: a data root is a folder"),
                        ('queue_type = "fast"', f"queue_type = 'fast' ({config}: queue_type): use one of"),
                        ('database_url = "results"', f"{config}: database_url: not a database URL: 'results'"),
                        ('broker_url = "htp://x"', f"{config}: broker_url: unknown broker scheme 'htp'")):
        config.write_text(f"[specq]\n{line}\n")
        with pytest.raises(SettingsError) as refused:
            load_settings()
        assert str(refused.value).startswith(start) and "SPECQ_" not in str(refused.value), refused.value
    # the environment wins over the file: its variable is named when its value is the one refused
    config.write_text("[specq]\nchunk_size = 4\n")
    monkeypatch.setenv("SPECQ_CHUNK_SIZE", "0")
    with pytest.raises(SettingsError, match="^SPECQ_CHUNK_SIZE must be at least 1, not 0$"):
        load_settings()


def test_a_catalog_that_is_missing_or_a_folder_is_named_as_given(tmp_path, monkeypatch, capsys):
    spectrum, out = str(tmp_path / "apStar-a.fits"), str(tmp_path / "out.csv")
    run = ["run", "--pipeline", "astronn_dist", "-o", out, spectrum]
    assert main([*run, "--catalog", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"specq: error: --catalog {tmp_path}: a folder, not a file\n"
    monkeypatch.setenv("SPECQ_CATALOG", str(tmp_path / "sources.csv"))
    assert main(run) == 2
    assert capsys.readouterr().err == f"specq: error: SPECQ_CATALOG {tmp_path / 'sources.csv'}: no such file\n"
    monkeypatch.delenv("SPECQ_CATALOG")
    config = tmp_path / "site.toml"
    config.write_text(f'[specq]\ncatalog = "{tmp_path / "stars.csv"}"\n')
    monkeypatch.setenv("SPECQ_CONFIG", str(config))
    assert main(run) == 2
    assert capsys.readouterr().err == f"specq: error: {config}: catalog {tmp_path / 'stars.csv'}: no such file\n"


def test_the_last_resort_handler_leaves_specqs_own_statement_errors_alone():
    import sqlalchemy.exc

    from specq.cli import _service_error

    assert _service_error(sqlalchemy.exc.IntegrityError("INSERT …", {}, Exception("UNIQUE constraint failed"))) is None
    assert _service_error(ValueError("not a service")) is None
    assert _service_error(ConnectionError("a remote data root's")) is None  # not the broker's client


def test_plot_of_a_table_without_the_pipelines_columns_is_refused(tmp_path, capsys):
    from astropy.table import Table

    other = tmp_path / "catalog.csv"
    Table({"ra": [1.0, 2.0], "dec": [3.0, 4.0]}).write(other)
    assert main(["results", "plot", "-i", str(other), "--pipeline", "astronn_dist", "-o", str(tmp_path / "p")]) == 2
    assert capsys.readouterr().err.startswith(f"specq: error: --input {other}: none of astronn_dist's columns (")
    assert not (tmp_path / "p").exists()


def test_plot_of_a_truncated_table_is_one_line(tmp_path, capsys):
    from astropy.table import Table

    whole = tmp_path / "rows.ecsv"
    Table({"teff": [5000.0, 6000.0] * 20, "logg": [4.0, 4.5] * 20}).write(whole)
    cut = tmp_path / "cut.ecsv"
    cut.write_text(whole.read_text()[:-40].rsplit(" ", 1)[0])  # ends inside a row, as a copy that stopped
    assert main(["results", "plot", "-i", str(cut), "--pipeline", "bossnet", "-o", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"specq: error: --input {cut}: not a table specq can read (") and err.count("\n") == 1, err


@pytest.mark.parametrize("command", [["status", "--unfinished"], ["reconcile", "--dry-run"]])
def test_a_mistyped_store_path_is_named_not_made(tmp_path, command):
    typo = tmp_path / "typo" / "results.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECQ_")}
    env.update(SPECQ_DATABASE_URL=f"sqlite:///{typo}", SPECQ_STATE_DIR=str(tmp_path / "state"),
               SPECQ_CONFIG=os.devnull, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "specq.cli", *command], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr == f"specq: error: no result database at {typo} (SPECQ_DATABASE_URL)\n"
    assert not typo.parent.exists()


def test_enqueue_to_a_server_that_never_answers_tls_ends_in_one_line(tmp_path):
    """A rediss:// URL to a server that never completes the handshake (a plain Redis, a wrong port)."""
    import socket

    from specq.testing.synthetic import write_spec_lite

    write_spec_lite(tmp_path / "spec-1-60000-1.fits", teff=5000, logg=4, fe_h=0, v_r=0, snr=30, seed=1)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # connections are taken by the kernel and never spoken to
    port = silent.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECQ_")}
    env.update(SPECQ_BROKER_URL=f"rediss://127.0.0.1:{port}/3", SPECQ_DATA_ROOT=str(tmp_path),
               SPECQ_STATE_DIR=str(tmp_path / "state"), SPECQ_CONFIG=os.devnull, PYTHONPATH=str(ROOT))
    try:
        done = subprocess.run([sys.executable, "-m", "specq.cli", "enqueue", "spec-1-60000-1.fits"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=90)
    finally:
        silent.close()
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"specq: error: cannot reach the broker rediss://127.0.0.1:{port}/3: Timeout")


def test_a_state_folder_that_is_a_file_is_one_line(tmp_path):
    from specq.testing.synthetic import write_spec_lite

    write_spec_lite(tmp_path / "spec-1-60000-1.fits", teff=5000, logg=4, fe_h=0, v_r=0, snr=30, seed=1)
    (tmp_path / "incoming").mkdir()
    state = tmp_path / "state"
    state.write_text("a file where the state folder should be\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECQ_")}
    env.update(SPECQ_STATE_DIR=str(state), SPECQ_DATA_ROOT=str(tmp_path), SPECQ_CONFIG=os.devnull,
               PYTHONPATH=str(ROOT))
    for command, words in ((["enqueue", "spec-1-60000-1.fits"], f"cannot make its folder {state}: File exists"),
                           (["watch", "incoming", "--max-seconds", "1"],
                            f"cannot make the folder {state} for the watch record: File exists (SPECQ_STATE_DIR)")):
        done = subprocess.run([sys.executable, "-m", "specq.cli", *command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr, done.stderr


def test_watch_with_refused_credentials_stops_at_once(tmp_path, rabbitmq_url):
    (tmp_path / "incoming").mkdir()
    wrong = rabbitmq_url.replace("guest:guest@", "guest:not-the-password@")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECQ_")}
    env.update(SPECQ_BROKER_URL=wrong, SPECQ_DATA_ROOT=str(tmp_path),
               SPECQ_STATE_DIR=str(tmp_path / "state"), SPECQ_CONFIG=os.devnull, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "specq.cli", "watch", "incoming", "--max-seconds", "60"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    shown = wrong.replace("not-the-password", "***")
    assert done.stderr == f"specq: error: watch: the broker {shown} refused the user name or password (ACCESS_REFUSED)\n"
