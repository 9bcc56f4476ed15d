"""Every file under deploy/: YAML parses, shell scripts pass shellcheck, no secrets are written down."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from deployment import DEPLOY, SBATCH, find_shellcheck, is_placeholder, yaml_docs


# -- every YAML file parses ------------------------------------------------------------
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def test_yaml_files_found():
    names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES}
    assert "docker-compose.yml" in names
    assert {"k8s/kustomization.yaml", "k8s/keda.yaml", "k8s/worker-gpu.yaml"} <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_parses(path):
    docs = yaml_docs(path)  # compose's ${VAR} interpolation is plain YAML text
    assert docs and all(isinstance(d, dict) for d in docs)


# -- shellcheck ------------------------------------------------------------------------------
def shell_scripts() -> list[Path]:
    found = []
    for p in sorted(DEPLOY.rglob("*")):
        if not p.is_file():
            continue
        if p.suffix in (".sh", ".sbatch", ".bash"):
            found.append(p)
            continue
        with open(p, "rb") as fh:
            head = fh.readline()
        if re.match(rb"#!\s*(/usr)?/bin/(env\s+)?(ba|da|k)?sh\b", head):
            found.append(p)
    return found


def test_shell_scripts_found():
    assert SBATCH in shell_scripts()


@pytest.mark.parametrize("path", shell_scripts(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_shellcheck(path):
    res = subprocess.run([find_shellcheck(), "--severity=style", "--external-sources", str(path)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_shellcheck_catches_problems(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\nrm -rf $1/*\n")
    res = subprocess.run([find_shellcheck(), str(bad)], capture_output=True, text=True)
    assert res.returncode != 0 and "SC2086" in res.stdout


# -- no secrets in deploy/ --------------------------------------------------------------------
# key containing password/secret/... then = or :, e.g. REDIS_PASSWORD=x, password: "x";
# not inside ${...}/$(...), where "REDIS_PASSWORD:?msg" is compose syntax.
SECRET_ASSIGN = re.compile(
    r"(?i)(?<![\w{(-])[\w-]*(password|passwd|secret|token|api[_-]?key|basic_auth)[\w-]*"
    r"[\"']?[ \t]*[:=][ \t]*[\"']?(?P<value>(?:\$\{[^}]*\}|\$\([^)]*\)|[^\s\"'#,])*)"
)
URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^:/\s@]*:(?P<value>\$\{[^}]*\}|[^@\s/]+)@")
REDIS_REQUIREPASS = re.compile(r"(?im)^\s*requirepass\s+(?P<value>\S+)")
PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
HEX_BLOB = re.compile(r"\b[0-9a-fA-F]{32,}\b")


def secret_findings(text: str) -> list[str]:
    found = []
    for rx in (SECRET_ASSIGN, URL_CREDENTIALS, REDIS_REQUIREPASS):
        for m in rx.finditer(text):
            if not is_placeholder(m.group("value")):
                found.append(m.group(0))
    found += PRIVATE_KEY.findall(text) + HEX_BLOB.findall(text)
    return found


@pytest.mark.parametrize("sample", [
    "REDIS_PASSWORD=hunter2",
    'POSTGRES_PASSWORD: "s3cr3t"',
    "SPECQ_BROKER_URL=redis://:hunter2@redis:6379/0",
    "url: postgresql+psycopg://specq:pa55word@db:5432/specq",
    "requirepass hunter2",
    "FLOWER_BASIC_AUTH=admin:admin",
    "-----BEGIN RSA PRIVATE KEY-----",
    "token: 0123456789abcdef0123456789abcdef",
])
def test_secret_detector_flags(sample):
    assert secret_findings(sample)


@pytest.mark.parametrize("sample", [
    "REDIS_PASSWORD=",
    "REDIS_PASSWORD: ${REDIS_PASSWORD:?set REDIS_PASSWORD}",
    "redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD}@redis:6379/0",
    "redis://:$(REDIS_PASSWORD)@$(REDIS_HOST):6379/0",
    'FLOWER_BASIC_AUTH: "<user>:<password>"',
    "# requirepass <redis-password>",
    '--from-literal=FLOWER_BASIC_AUTH="admin:$(openssl rand -hex 16)"',
    "key: REDIS_PASSWORD",
    "secretKeyRef:",
])
def test_secret_detector_passes_placeholders(sample):
    assert not secret_findings(sample)


DEPLOY_FILES = sorted(p for p in DEPLOY.rglob("*") if p.is_file())


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_no_secrets_in_deploy(path):
    assert path.name != ".env", "a filled .env must not live in the repository"
    findings = secret_findings(path.read_text(errors="replace"))
    assert not findings, findings
