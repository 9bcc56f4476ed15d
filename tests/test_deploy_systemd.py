"""systemd deployment: the unit files, their stop timeouts and the templated worker unit."""
from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import pytest

from deployment import SYSTEMD, pool_of, queue_of, timespan_seconds


def read_unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # systemd keys are case-sensitive
    cp.read_string(path.read_text())
    return cp


def unit_values(path: Path, key: str) -> list[str]:
    """All values of a key (systemd allows repeats; configparser keeps the last)."""
    return [line.split("=", 1)[1].strip() for line in path.read_text().splitlines()
            if line.startswith(key + "=")]


UNITS = sorted(SYSTEMD.glob("*.service"))


def test_units_found():
    assert {p.name for p in UNITS} >= {"specq-worker@.service", "specq-watch.service"}


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit(path):
    cp = read_unit(path)
    assert {"Unit", "Service", "Install"} <= set(cp.sections())
    svc = cp["Service"]
    argv = shlex.split(svc["ExecStart"])
    assert Path(argv[0]).name == "specq" and argv[0].startswith("/"), "ExecStart needs an absolute specq"
    assert svc["Restart"] == "on-failure"
    assert svc["KillSignal"] == "SIGTERM"
    assert "/etc/specq/specq.env" in unit_values(path, "EnvironmentFile")
    assert svc.get("User") and svc["User"] != "root"
    assert cp["Install"]["WantedBy"] == "multi-user.target"


def test_worker_unit_is_templated_by_queue():
    path = SYSTEMD / "specq-worker@.service"
    svc = read_unit(path)["Service"]
    argv = shlex.split(svc["ExecStart"])
    assert argv[1] == "worker" and queue_of(argv) == "%i"
    # Stop timeout: longer than a chunk, shorter than the visibility timeout.
    stop = timespan_seconds(svc["TimeoutStopSec"])
    env = dict(line.split("=", 1) for line in (SYSTEMD / "specq.env.example").read_text().splitlines()
               if "=" in line and not line.startswith("#"))
    assert 600 <= stop <= int(env["SPECQ_VISIBILITY_TIMEOUT"])
    assert svc["KillMode"] == "mixed"
    gpu_env = (SYSTEMD / "worker-gpu.env").read_text()
    assert re.search(r"^SPECQ_WORKER_ARGS=.*--pool solo", gpu_env, re.M)
    cpu_args = re.search(r"^SPECQ_WORKER_ARGS=(.*--concurrency \d+.*)$", (SYSTEMD / "worker-cpu.env").read_text(), re.M)
    assert cpu_args and pool_of(cpu_args.group(1).split()) == "prefork"


def test_watch_unit():
    svc = read_unit(SYSTEMD / "specq-watch.service")["Service"]
    argv = shlex.split(svc["ExecStart"])
    assert argv[1] == "watch" and "--pipeline" in argv
    assert svc["StateDirectory"] == "specq"
