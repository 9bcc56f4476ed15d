"""The command line's operations side: version, help defaults, pipelines, logs, watch summary, bench's Redis."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def _help(*command: str) -> str:
    """The help text of ``specq COMMAND…``."""
    import argparse

    from specq.cli import build_parser

    parser = build_parser()
    for name in command:
        choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        parser = choices[name]
    return parser.format_help()


def test_version(capsys):
    from specq.cli import main
    from workers import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"specq {__version__}"


def test_help_shows_defaults_and_the_one_default_pipeline_set():
    from workers.registry import names

    assert "(default: 2.0)" in _help("watch")  # --poll-interval, --settle
    assert "(default: 64)" in _help("bench") and "(default: 12)" in _help("demo")
    for command in ("run", "enqueue", "watch"):
        text = " ".join(_help(command).split())
        assert f"default: all registered, {', '.join(names())}" in text, command
    assert "FLUSHES" in _help("bench") and "--force" in _help("bench")


def test_run_enqueue_and_watch_default_to_every_registered_pipeline():
    from specq.cli import build_parser
    from specq.cli.checks import chosen_pipelines
    from workers.registry import names

    parser = build_parser()
    for argv in (["run", "-o", "x.csv", "f.fits"], ["enqueue", "f.fits"], ["watch", "incoming"]):
        args = parser.parse_args(argv)
        assert chosen_pipelines(args.pipeline) == (list(names()), False), argv
    assert chosen_pipelines("astronn_dist") == (["astronn_dist"], True)


def test_verbose_and_log_format_are_taken_after_the_subcommand_too():
    from specq.cli import build_parser

    args = build_parser().parse_args(["watch", "-v", "--log-format", "json", "incoming"])
    assert args.verbose is True and args.log_format == "json"
    args = build_parser().parse_args(["-v", "status"])
    assert args.verbose is True  # not reset by the subcommand's parser


def test_json_log_lines_carry_task_and_spectrum(tmp_path):
    from workers.refs import SpectrumRef
    from workers import engine, logs

    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    logs.configure(logging.INFO, "json", stream=stream)
    try:
        with logs.task_context("task-7", "bossnet"):
            # A real per-spectrum line: a file still missing on the last attempt is flagged.
            jobs = engine.read_jobs(SpectrumRef("night/spec-1-2-3.fits", 1, 0), tmp_path, "boss", last_attempt=True)
        logging.getLogger("specq.test").info("outside any task")
    finally:
        for handler in [h for h in root.handlers if getattr(h, "specq", False)]:
            root.removeHandler(handler)
        root.setLevel(level)
    assert jobs[0].error and "still unreadable" in jobs[0].error
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    flagged = next(r for r in lines if r["logger"] == "specq.engine")
    assert flagged["task_id"] == "task-7" and flagged["pipeline"] == "bossnet"
    assert flagged["spectrum"] == "night/spec-1-2-3.fits:1:0" and flagged["level"] == "WARNING"
    outside = lines[-1]
    assert outside["message"] == "outside any task" and "task_id" not in outside


def test_a_command_logs_to_its_stderr_until_that_is_closed(monkeypatch):
    """A command run in-process under a capture that is closed afterwards leaves no handler
    on the closed stream: later lines go to whatever stderr is then."""
    from workers import logs

    root = logging.getLogger()
    level = root.level
    first, swapped, later = io.StringIO(), io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logs.configure(logging.WARNING, "text")
    try:
        # A stream swapped in while the first is open (a Celery worker's logging proxy) is
        # not written to: the proxy would hand the line back to logging.
        monkeypatch.setattr(sys, "stderr", swapped)
        logging.getLogger("specq.test").warning("while captured")
        assert "while captured" in first.getvalue() and not swapped.getvalue()
        first.close()
        monkeypatch.setattr(sys, "stderr", later)
        logging.getLogger("specq.test").warning("after the capture closed")
    finally:
        for handler in [h for h in root.handlers if getattr(h, "specq", False)]:
            root.removeHandler(handler)
        root.setLevel(level)
    written = later.getvalue()
    assert "Logging error" not in written  # what a handler on the closed stream would print
    assert written.count("after the capture closed") == 1 and "while captured" not in written


def test_watch_logs_each_file_sent_and_a_summary(tmp_path):
    from specq.testing.synthetic import write_spec_lite

    incoming = tmp_path / "data" / "incoming"
    incoming.mkdir(parents=True)
    for i in (1, 2):
        write_spec_lite(incoming / f"spec-{i}-60000-{i}.fits", teff=5000, logg=4, fe_h=0, v_r=0, snr=30, seed=i)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECQ_")}
    env.update(SPECQ_DATA_ROOT=str(tmp_path / "data"), SPECQ_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(ROOT),
               SPECQ_CONFIG=os.devnull)  # the embedded broker: the messages wait in the state folder
    out = subprocess.run([sys.executable, "-m", "specq.cli", "watch", str(incoming), "--settle", "0",
                          "--poll-interval", "0.2", "--max-seconds", "2", "--poll-only"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    sent = [line for line in out.stderr.splitlines() if " sent incoming/spec-" in line]
    assert len(sent) == 2 and all("(1 spectra;" in line for line in sent), out.stderr
    assert "2 file(s) sent, 2 spectra in " in out.stderr and "watch stopped after" in out.stderr, out.stderr


def test_bench_refuses_to_flush_a_redis_database_it_did_not_write(clean_redis, capsys):
    import redis

    from specq.bench import BENCH_MARKER, BenchRefused, claim_redis
    from specq.cli import main

    client = redis.Redis.from_url(clean_redis)
    client.set("someone:else", "production data")
    assert main(["bench", "--broker", clean_redis, "--spectra", "2"]) == 2  # refused before any measuring
    assert "did not write" in capsys.readouterr().err and client.get("someone:else") == b"production data"
    with pytest.raises(BenchRefused):
        claim_redis(clean_redis)
    claim_redis(clean_redis, force=True)  # --force: flushed, and marked as the bench's
    assert client.get("someone:else") is None and client.exists(BENCH_MARKER)
    client.lpush("gpu", "a message of an earlier bench run")
    claim_redis(clean_redis)  # the bench's own database: flushed without --force
    assert client.dbsize() == 1 and client.exists(BENCH_MARKER)


def test_a_pipelines_own_options_come_from_its_spec(monkeypatch):
    import dataclasses

    from specq.cli import build_parser
    from specq.cli.parser import pipeline_options
    from workers import registry
    from workers.api import Option

    kernel = Option("--kernel", "kernel", "which kernel", choices=("a", "b"), commands=("run",))
    base = registry.get("bossnet")
    specs = {name: dataclasses.replace(base, name=name, schema=dataclasses.replace(base.schema, pipeline=name),
                                       options=(kernel,)) for name in ("one", "two")}
    monkeypatch.setattr(registry, "_registry", {**registry.pipelines(), **specs})
    parser = build_parser()
    args = parser.parse_args(["run", "--kernel", "b", "-o", "x.csv", "f.fits"])
    # One flag for both pipelines that declare it; each gets the value as its class's keyword.
    assert pipeline_options(args, specs["one"], "run") == pipeline_options(args, specs["two"], "run") == {"kernel": "b"}
    assert pipeline_options(args, registry.get("astronn_dist"), "run") == {}
    assert "which kernel (one, two)" in " ".join(_help("run").split())
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--kernel", "c", "-o", "x.csv", "f.fits"])
    with pytest.raises(SystemExit):  # declared for run only
        parser.parse_args(["bench", "--kernel", "a"])


def test_enqueue_counts_what_it_sent_and_says_when_it_sent_nothing(tmp_path):
    from specq.testing.synthetic import make_dataset

    root = tmp_path / "data"
    files = sorted({str(p) for p in make_dataset(root, n_boss=1, n_apogee=0, seed=3, formats=("spec-lite",))["path"]})
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECQ_")}
    env.update(SPECQ_DATA_ROOT=str(root), SPECQ_STATE_DIR=str(tmp_path / "state"), SPECQ_CONFIG=os.devnull,
               PYTHONPATH=str(ROOT))

    def enqueue(*args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "specq.cli", "enqueue", *args], cwd=root, env=env,
                              capture_output=True, text=True, timeout=120)

    sent = enqueue(*files)  # every pipeline that takes a BOSS spectrum: those that took none are not listed
    assert sent.returncode == 0 and sent.stdout.splitlines() == ["bossnet: 1 spectrum in 1 message"], sent.stdout
    none = enqueue("--pipeline", "astronn_dist", *files)
    assert none.returncode == 0 and none.stdout == "", none.stdout
    assert "nothing sent: no spectrum for astronn_dist" in none.stderr.splitlines(), none.stderr
