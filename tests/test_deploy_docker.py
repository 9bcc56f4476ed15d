"""Docker deployment: the compose file, the Dockerfiles and redis.conf, cross-checked with the CLI."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from deployment import (COMPOSE, DEPLOY, ROOT, as_argv, import_or_fail, mount_parts, option_value, pool_of, queue_of,
                        timespan_seconds)
from deployment import compose, services  # noqa: F401 (fixtures)


# -- docker compose ----------------------------------------------------------------------
SPECQ_SERVICES = ("worker-gpu", "worker-cpu", "watcher", "flower")


def test_compose_services(services):
    assert {"redis", "postgres", "worker-gpu", "worker-cpu", "watcher", "flower"} <= set(services)


def test_compose_redis_aof_password_noeviction(services):
    redis = services["redis"]
    argv = as_argv(redis["command"])
    assert argv[0] == "redis-server"
    # The config file it reads is mounted from deploy/redis.conf, which turns AOF on.
    conf_in_container = argv[1]
    mounts = {mount_parts(m)[1]: mount_parts(m)[0] for m in redis["volumes"]}
    assert conf_in_container in mounts, "redis.conf is not mounted where redis-server reads it"
    host_conf = (DEPLOY / mounts[conf_in_container]).resolve()
    assert host_conf == (DEPLOY / "redis.conf").resolve()
    conf = redis_conf_directives(host_conf)
    assert conf["appendonly"] == "yes"
    assert conf["maxmemory-policy"] == "noeviction"
    # Password from the env file, never a literal.
    pw = option_value(argv, "--requirepass")
    assert pw and re.fullmatch(r"\$\{REDIS_PASSWORD(:\?[^}]*)?\}", pw), pw
    assert "/data" in {mount_parts(m)[1] for m in redis["volumes"]}, "AOF directory not on a volume"
    assert redis.get("healthcheck")


def test_compose_postgres_healthcheck_and_volume(compose, services):
    pg = services["postgres"]
    assert "pg_isready" in " ".join(as_argv(pg["healthcheck"]["test"]))
    named = [mount_parts(m)[0] for m in pg["volumes"]]
    assert any(n in compose["volumes"] for n in named)
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")


def test_compose_named_volumes_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for m in svc.get("volumes", []):
            src = mount_parts(m)[0]
            if src and not src.startswith((".", "/", "$", "~")):
                assert src in declared, f"{name}: volume {src} not declared"


def test_compose_depends_on_healthy(services):
    for name in SPECQ_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["redis"]["condition"] == "service_healthy", name
        for dep, cond in deps.items():
            if cond.get("condition") == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits on {dep}, which has no healthcheck"


def test_compose_gpu_worker(services):
    gpu = services["worker-gpu"]
    argv = as_argv(gpu["command"])
    assert argv[0] == "worker"
    assert queue_of(argv) == "gpu"
    assert pool_of(argv) == "solo"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert gpu["environment"]["SPECQ_DEVICE"] == "cuda"
    assert "Dockerfile.gpu" in gpu["build"]["dockerfile"]


def test_compose_cpu_worker(services):
    argv = as_argv(services["worker-cpu"]["command"])
    assert argv[0] == "worker"
    assert queue_of(argv) == "cpu"
    assert pool_of(argv) == "prefork"
    assert option_value(argv, "--concurrency", "-c")


def test_compose_watcher_and_flower(services):
    argv = as_argv(services["watcher"]["command"])
    assert argv[0] == "watch" and argv[1].startswith("/")
    assert set(option_value(argv, "--pipeline").split(",")) == {"bossnet", "astronn_dist"}
    assert any(m.startswith("watch-state:") for m in services["watcher"]["volumes"])
    flower = services["flower"]
    assert as_argv(flower["entrypoint"]) == ["celery"]
    fargv = as_argv(flower["command"])
    assert "flower" in fargv and "--port=5555" in fargv
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${")


def test_compose_specq_env(services):
    for name in SPECQ_SERVICES:
        env = services[name]["environment"]
        for key in ("SPECQ_BROKER_URL", "SPECQ_RESULT_BACKEND"):
            assert env[key].startswith("redis://:${REDIS_PASSWORD"), (name, key)
        assert env["SPECQ_BROKER_URL"].endswith("/0") and env["SPECQ_RESULT_BACKEND"].endswith("/1")
        assert env["SPECQ_DATABASE_URL"].startswith("postgresql+psycopg://specq:${POSTGRES_PASSWORD")


def test_compose_data_mounted_read_only(services):
    for name in ("worker-gpu", "worker-cpu", "watcher"):
        svc = services[name]
        mounts = [mount_parts(m) for m in svc["volumes"]]
        data = [m for m in mounts if m[1] == "/data"]
        assert data and all(m[2] == "ro" for m in data), name
        assert data[0][0].startswith("${SPECQ_HOST_DATA"), "data root comes from the host path in .env"
        weights = [m for m in mounts if m[1] == "/weights"]
        assert all(m[2] == "ro" for m in weights), name
    for name in SPECQ_SERVICES:
        assert services[name].get("read_only") is True, name


def test_compose_builds_and_mounts_exist(services):
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), name
        build = svc.get("build")
        if build:
            ctx = (DEPLOY / build["context"]).resolve()
            assert ctx.is_dir(), f"{name}: build context {ctx} missing"
            assert (ctx / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing"
            assert (ctx / "pyproject.toml").is_file(), f"{name}: context is not the repo root"
        for m in svc.get("volumes", []):
            src = mount_parts(m)[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: {src} missing"


def test_compose_workers_stop_gracefully(services):
    for name in ("worker-gpu", "worker-cpu"):
        grace = services[name]["stop_grace_period"]
        assert timespan_seconds(grace) >= 600, (name, grace)


def test_compose_matches_compose_spec():
    import_or_fail("check_jsonschema", "check-jsonschema")
    # The compose-spec schema ships inside check-jsonschema: no network needed.
    res = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_env_example_covers_required_variables():
    live = "\n".join(line for line in COMPOSE.read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    required = set(re.findall(r"\$\{(\w+):\?", live))
    example = DEPLOY / ".env.example"
    keys = {line.split("=", 1)[0].strip() for line in example.read_text().splitlines()
            if "=" in line and not line.lstrip().startswith("#")}
    assert required and required <= keys, required - keys


# -- Dockerfiles -------------------------------------------------------------------------
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_dockerfile(flavour):
    path = DEPLOY / f"Dockerfile.{flavour}"
    ins = dockerfile_instructions(path)
    froms = [i for i, (k, _) in enumerate(ins) if k == "FROM"]
    assert froms
    final = ins[froms[-1]:]
    users = [v for k, v in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "final stage runs as root"
    entry = [v for k, v in final if k == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["specq"]

    runs = [v for k, v in ins if k == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if "torch==2.13.0" in r)
    specq_at = next(i for i, r in enumerate(runs) if "[worker,postgres" in r)  # a worker image: the networks
    assert torch_at < specq_at, "torch must be installed before specq"
    torch_run = runs[torch_at]
    assert "--index-url" in torch_run
    assert any("setuptools<81" in r for r in runs)

    args = {v.split("=", 1)[0]: v.split("=", 1)[1] for k, v in ins if k == "ARG" and "=" in v}
    index = args.get("TORCH_INDEX_URL", "")
    if flavour == "gpu":
        assert re.search(r"/whl/cu\d+$", index), index
        assert "SPECQ_DEVICE=cuda" in " ".join(v for k, v in final if k == "ENV")
    else:
        assert index.endswith("/whl/cpu"), index

    # COPY sources (build context = repo root) must exist.
    for k, v in ins:
        if k == "COPY" and "--from=" not in v:
            srcs = shlex.split(v)[:-1]
            for s in srcs:
                assert (ROOT / s).exists(), f"COPY {s}: not in the repository"

    ignore = (DEPLOY / f"Dockerfile.{flavour}.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore
    assert "weights/*" in ignore and "!weights/*.toml" in ignore  # weight files out, their manifests in


# -- redis.conf ----------------------------------------------------------------------------
def redis_conf_directives(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key.lower()] = value.strip()
    return out


def test_redis_conf():
    path = DEPLOY / "redis.conf"
    conf = redis_conf_directives(path)
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "everysec"
    assert conf["maxmemory-policy"] == "noeviction"
    assert conf["protected-mode"] == "yes"
    assert "bind" in conf
    assert "requirepass" not in conf, "the password belongs on the command line, not in the file"
    text = path.read_text()
    assert re.search(r"^#\s*tls-port\s+\d+", text, re.M), "commented TLS section missing"
    # The noeviction choice is explained.
    assert re.search(r"#.*evict", text, re.I)
