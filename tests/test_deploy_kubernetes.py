"""deploy/kubernetes/: the manifests are valid Kubernetes objects and agree with the code they deploy.

Schemas come from kubernetes-validate (bundled JSON schemas, offline). The other checks read the
Dockerfile and run the manifests' settings through the server's own CLI parser and configuration, so a
renamed flag or variable, a moved port or a changed limit fails here rather than in a cluster.
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import math
import re
import shlex
from fractions import Fraction
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradserve.server import cli, config, transport
from gradserve.server.app import SEND_GRACE_SECONDS, running

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = "kustomization.yaml"
K8S_VERSIONS = ("1.27", "1.37")
"""Oldest supported (gRPC probes are GA from 1.27) and newest schemas that the pinned kubernetes-validate ships."""
MiB = 1 << 20
WORKER_STOP_SECONDS = 2
"""WorkerPool.close waits this long for each worker before killing it."""
PROCESS_BYTES_PER_MESSAGE = 4
"""Process memory (not /dev/shm) a worker's call with a full-size message in and out holds at its peak, in
units of max_message_bytes: gRPC's buffers, the parsed request, the result and the serialized response
(measured: 2 workers on 256 MB Sin gradients peak at 2.9 GiB with 0.5 GiB of it in /dev/shm)."""
BASELINE_BYTES = 256 * MiB
"""An idle server with its workers, with room to spare (measured: about 100 MiB)."""


# ---- reading the files ----


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.glob("*.yaml") if p.name != KUSTOMIZATION)


@functools.cache
def load_all() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for every object in the manifests (read once; the checks do not change them)."""
    return [(p.name, doc) for p in manifest_files() for doc in yaml.safe_load_all(p.read_text()) if doc]


def only(kind: str) -> dict[str, Any]:
    objs = [doc for _, doc in load_all() if doc["kind"] == kind]
    assert len(objs) == 1, f"expected one {kind} in {DEPLOY}, found {len(objs)}"
    return objs[0]


def pod_spec() -> dict[str, Any]:
    return only("Deployment")["spec"]["template"]["spec"]


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1, "the server pod has one container"
    return containers[0]


def dockerfile() -> dict[str, list[str]]:
    """Each instruction (upper case) of the Dockerfile's final stage, the image, with the arguments of each
    of its occurrences."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            if word.upper() == "FROM":
                out = {}
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def image_labels() -> dict[str, str]:
    """The image's LABELs, with ${ARG} references replaced by the ARG's default."""
    args = dict(a.partition("=")[::2] for a in dockerfile().get("ARG", []))
    labels: dict[str, str] = {}
    for line in dockerfile().get("LABEL", []):
        for item in shlex.split(line):
            key, _, value = item.partition("=")
            labels[key] = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)
    return labels


def image_env() -> dict[str, str]:
    """The image's ENV variables."""
    env: dict[str, str] = {}
    for args in dockerfile().get("ENV", []):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def exposed_port() -> int:
    (expose,) = dockerfile()["EXPOSE"]
    return int(expose.split("/")[0])


QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
SUFFIX: dict[str, int | Fraction] = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "n": Fraction(1, 10**9),
          "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "P": 10**15, "E": 10**18}


def quantity(q: str | int | float) -> Fraction:
    """A Kubernetes resource quantity ("2", "500m", "4Gi", "1e3") as an exact number."""
    m = QUANTITY.match(str(q))
    assert m, f"not a Kubernetes quantity: {q!r}"
    number, suffix = Fraction(m.group(1)), m.group(2) or ""
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        return number * Fraction(10) ** int(suffix[1:])
    return number * SUFFIX.get(suffix, 1)


def resolve_env(c: dict[str, Any]) -> dict[str, str]:
    """The container's variables as the kubelet would set them (secrets and config maps as placeholders)."""
    env: dict[str, str] = {}
    for var in c.get("env", []):
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = var.get("value", "")
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            assert ref.get("containerName", c["name"]) == c["name"]
            kind, _, resource = ref["resource"].partition(".")
            amount = quantity(c["resources"][kind][resource]) / quantity(ref.get("divisor", "1"))
            env[var["name"]] = str(math.ceil(amount))  # the kubelet rounds up to a whole number of divisors
        else:  # secretKeyRef, configMapKeyRef, fieldRef
            env[var["name"]] = "placeholder"
    return env


def effective_config() -> config.ServerConfig:
    """The ServerConfig that ``gradserve serve`` builds in the pod: the image's entrypoint, the container's
    args and environment (over the image's ENV), through the real CLI parser and configuration."""
    args = cli._parser().parse_args(["serve", *container().get("args", [])])
    environ = {**image_env(), **resolve_env(container())}
    return config.from_arguments(args, environ)


def ports(c: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c["ports"]}


# ---- the checks ----


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_is_a_valid_kubernetes_object(version: str) -> None:
    objs = load_all()
    assert {doc["kind"] for _, doc in objs} >= {"Deployment", "Service"}
    for name, doc in objs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {doc['kind']} is not valid Kubernetes {version}: {path}: {exc.message}")


def test_kustomization_lists_every_manifest_and_names_the_image() -> None:
    kust = yaml.safe_load((DEPLOY / KUSTOMIZATION).read_text())
    assert kust["kind"] == "Kustomization"
    assert sorted(kust["resources"]) == [p.name for p in manifest_files()]
    image_names = {i["name"] for i in kust.get("images", [])}
    if image_names:  # `kustomize edit set image gradserve=...` must find the container's image
        assert container()["image"].rsplit(":", 1)[0] in image_names


def test_the_container_runs_the_image_entrypoint_as_its_user() -> None:
    c, spec = container(), pod_spec()
    assert "command" not in c, "the image's ENTRYPOINT (gradserve serve) must run; pass settings as args or env"
    assert json.loads(dockerfile()["ENTRYPOINT"][-1]) == ["gradserve", "serve"]
    user = int(dockerfile()["USER"][-1].split(":")[0])
    sc = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
    assert sc.get("runAsNonRoot") is True
    assert sc.get("runAsUser", user) == user, "runAsUser should be the Dockerfile's USER (its home and files)"
    assert sc.get("allowPrivilegeEscalation") is False
    assert spec.get("enableServiceLinks") is False, (
        "Service links inject <SERVICE>_PORT=tcp://... variables; for a Service named gradserve-* they would "
        "land in GRADSERVE_* settings the server reads")


def test_args_and_variables_are_real_settings() -> None:
    c = container()
    try:
        cli._parser().parse_args(["serve", *c.get("args", [])])
    except SystemExit:
        pytest.fail(f"`gradserve serve` rejects the container's args {c.get('args')} (see the error above)")
    known = {config._env(f.name) for f, _ in config._scalar_fields()}
    names = [v["name"] for v in c.get("env", []) if v["name"].startswith("GRADSERVE_")]
    assert names, "the settings are expected as GRADSERVE_* variables"
    unknown = sorted(set(names) - known)
    assert not unknown, f"server/config.py reads no such variable: {unknown}; it reads {sorted(known)}"
    effective_config()  # and their values pass the server's own validation


def test_the_grpc_port_is_the_images_port_and_the_services() -> None:
    cfg, c = effective_config(), container()
    assert cfg.port == exposed_port() == ports(c)["grpc"], "GRADSERVE_PORT, EXPOSE and containerPort disagree"
    svc = only("Service")
    assert svc["spec"].get("clusterIP") == "None", "headless, so that dns:/// resolves every pod for round_robin"
    (grpc_port,) = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc_port["appProtocol"] == "grpc"
    # Clients dial the pods' addresses with the port of their target, so the Service's port must be the pods'.
    assert grpc_port["port"] == grpc_port.get("targetPort") == cfg.port


def test_the_service_and_budget_select_the_deployments_pods() -> None:
    pod_labels = only("Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = [only("Service")["spec"]["selector"], only("Deployment")["spec"]["selector"]["matchLabels"]]
    selectors += [doc["spec"]["selector"]["matchLabels"] for _, doc in load_all() if doc["kind"] == "PodDisruptionBudget"]
    for selector in selectors:
        assert selector and selector.items() <= pod_labels.items()


def test_metrics_port_is_served_and_advertised() -> None:
    cfg, c = effective_config(), container()
    assert cfg.metrics_port is not None, "set GRADSERVE_METRICS_PORT (--metrics-port) so Prometheus can scrape"
    assert ports(c)["metrics"] == cfg.metrics_port
    annotations = only("Deployment")["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in annotations:
        assert int(annotations["prometheus.io/port"]) == cfg.metrics_port
    svc_ports = {p["name"]: p for p in only("Service")["spec"]["ports"]}
    if "metrics" in svc_ports:
        assert svc_ports["metrics"]["port"] == svc_ports["metrics"].get("targetPort") == cfg.metrics_port


def test_probes_are_grpc_health_checks_the_server_answers_serving() -> None:
    cfg, c = effective_config(), container()
    services = []
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c.get(kind)
        assert probe and set(probe) & {"grpc", "exec", "httpGet", "tcpSocket"} == {"grpc"}, f"{kind}: a gRPC probe"
        assert probe["grpc"]["port"] == cfg.port, f"{kind} probes port {probe['grpc']['port']}, the server serves {cfg.port}"
        services.append(probe["grpc"].get("service", ""))
    # Ask a real server's health service what the kubelet would ask.
    with running(config.ServerConfig(host="127.0.0.1", port=0, workers=1)) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for service in services:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
                except grpc.RpcError as exc:
                    pytest.fail(f"a probe asks for health service {service!r}; the server answers {exc.code().name}")
                assert status == health_pb2.HealthCheckResponse.SERVING, service


def test_one_worker_per_core_of_the_cpu_limit() -> None:
    res = container()["resources"]
    cpu = quantity(res["limits"]["cpu"])
    assert cpu.denominator == 1, f"a CPU limit in whole cores (one worker each), got {res['limits']['cpu']}"
    assert effective_config().workers == cpu, "GRADSERVE_WORKERS must equal the CPU limit"
    for resource in ("cpu", "memory"):
        assert quantity(res["requests"][resource]) == quantity(res["limits"][resource]), f"{resource}: requests == limits"


def shm_volume() -> dict[str, Any]:
    (mount,) = [m for m in container().get("volumeMounts", []) if m["mountPath"] == transport.SHM_DIR]
    (volume,) = [v for v in pod_spec()["volumes"] if v["name"] == mount["name"]]
    return volume


def test_dev_shm_holds_full_size_tensors_both_ways() -> None:
    cfg, volume = effective_config(), shm_volume()
    empty_dir = volume.get("emptyDir", {})
    assert empty_dir.get("medium") == "Memory", f"{transport.SHM_DIR}: a memory-backed emptyDir (tmpfs)"
    size = quantity(empty_dir["sizeLimit"])
    default_max = config.Limits().max_message_bytes
    assert size >= 2 * default_max, f"{transport.SHM_DIR} must hold a default-size message in and out ({2 * default_max} bytes)"
    # Each worker has an in- and an out-arena of up to max_message_bytes; the pool keeps 16 MiB free.
    needed = cfg.workers * 2 * cfg.limits.max_message_bytes + 16 * MiB
    assert size >= needed, f"{transport.SHM_DIR} sizeLimit {empty_dir['sizeLimit']} < {needed / MiB:.0f} MiB for {cfg.workers} workers"


def test_memory_limit_covers_shm_and_every_worker_busy() -> None:
    cfg = effective_config()
    limit = quantity(container()["resources"]["limits"]["memory"])
    shm = quantity(shm_volume()["emptyDir"]["sizeLimit"])  # tmpfs pages are charged to the pod
    needed = shm + cfg.workers * PROCESS_BYTES_PER_MESSAGE * cfg.limits.max_message_bytes + BASELINE_BYTES
    assert limit >= needed, f"memory limit {limit / MiB:.0f} MiB < {needed / MiB:.0f} MiB"


def test_termination_grace_outlasts_the_drain() -> None:
    cfg = effective_config()
    period = pod_spec()["terminationGracePeriodSeconds"]
    drain = cfg.grace_seconds + SEND_GRACE_SECONDS + WORKER_STOP_SECONDS * cfg.workers
    assert period > drain, f"terminationGracePeriodSeconds {period} <= the server's drain, up to {drain} s"


def test_read_only_root_has_a_writable_tmp() -> None:
    c = container()
    if c.get("securityContext", {}).get("readOnlyRootFilesystem"):
        # multiprocessing's fork server makes its socket in tempfile's directory: without one it cannot start.
        mounts = {m["mountPath"] for m in c.get("volumeMounts", []) if not m.get("readOnly")}
        assert "/tmp" in mounts


def test_image_labels_describe_the_installed_package() -> None:
    labels, meta = image_labels(), importlib.metadata.metadata("gradserve")
    assert labels.get("org.opencontainers.image.title") == meta["Name"]
    assert labels.get("org.opencontainers.image.version") == meta["Version"], "the Dockerfile's ARG VERSION default"
    assert labels.get("org.opencontainers.image.description") == meta["Summary"]
    assert labels.get("org.opencontainers.image.licenses") == meta["License-Expression"]


def disruptions_allowed(budget: dict[str, Any], replicas: int) -> int:
    """How many of ``replicas`` healthy pods a PodDisruptionBudget lets a drain evict at once (the disruption
    controller rounds percentages up, for minAvailable and maxUnavailable alike)."""
    def scaled(value: int | str) -> int:
        if isinstance(value, str) and value.endswith("%"):
            return math.ceil(Fraction(value[:-1]) * replicas / 100)
        return int(value)
    if "maxUnavailable" in budget:
        return scaled(budget["maxUnavailable"])
    return replicas - scaled(budget["minAvailable"])


def test_the_autoscaler_scales_the_deployment_on_cpu_requests() -> None:
    hpa, deployment = only("HorizontalPodAutoscaler"), only("Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (deployment["apiVersion"], deployment["kind"], deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count; `kubectl apply` would reset a fixed one"
    (cpu,) = [m["resource"]["target"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu["type"] == "Utilization"
    # With requests == limits (test_one_worker_per_core_of_the_cpu_limit) a pod never passes 100% of its request.
    assert 0 < cpu["averageUtilization"] < 100
    for c in pod_spec()["containers"]:  # utilization is usage over the request: every container needs one
        assert quantity(c.get("resources", {}).get("requests", {}).get("cpu", 0)) > 0, f"{c['name']}: no CPU request"


def test_every_replica_count_the_autoscaler_picks_lets_a_drain_through_and_keeps_a_pod() -> None:
    spec = only("HorizontalPodAutoscaler")["spec"]
    low, high = spec.get("minReplicas", 1), spec["maxReplicas"]
    assert 2 <= low < high, "at least two pods, so that one can be drained while the other serves"
    budgets = [doc["spec"] for _, doc in load_all() if doc["kind"] == "PodDisruptionBudget"]
    assert budgets
    for budget in budgets:
        for replicas in range(low, high + 1):
            allowed = disruptions_allowed(budget, replicas)
            assert allowed >= 1, f"with {replicas} replicas the budget allows no eviction: node drains would block"
            assert allowed < replicas, f"with {replicas} replicas the budget lets a drain evict every pod"
