"""Kubernetes deployment: kinds, schemas, selectors, references, KEDA scaling and secrets of deploy/k8s."""
from __future__ import annotations

import json
import re

import pytest

from deployment import (K8S, container, import_or_fail, is_placeholder, objects, option_value, pool_of, queue_of,
                        yaml_docs)
from deployment import k8s  # noqa: F401 (a fixture)


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
    assert queue_of(c["args"]) == "cpu" and pool_of(c["args"]) == "prefork"
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
