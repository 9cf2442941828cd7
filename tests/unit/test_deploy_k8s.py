"""deploy/k8s checked without a cluster: every manifest parses, names and references resolve,
selectors select what they should, ports and probes agree, env names are settings, KEDA agrees
with the ConfigMap and the topic's partitions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from worker import __version__
from worker.cli.main import build_parser
from worker.config import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SETTING_ENV = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
WORKER = ("Deployment", "routeworker")

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], Manifest]:
    found: dict[tuple[str, str], Manifest] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


@pytest.fixture(scope="module")
def config(objects: dict[tuple[str, str], Manifest]) -> dict[str, str]:
    return dict(objects[("ConfigMap", "routeworker-config")]["data"])


def pod_specs(objects: dict[tuple[str, str], Manifest]) -> Iterator[tuple[tuple[str, str], Manifest]]:
    for key, obj in objects.items():
        if key[0] in ("Deployment", "Job", "StatefulSet"):
            yield key, obj["spec"]["template"]


def containers(pod_template: Manifest) -> list[Manifest]:
    spec = pod_template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def worker_container(objects: dict[tuple[str, str], Manifest]) -> Manifest:
    (container,) = objects[WORKER]["spec"]["template"]["spec"]["containers"]
    return container


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def secret_keys(objects: dict[tuple[str, str], Manifest], name: str) -> set[str]:
    secret = objects.get(("Secret", name))
    assert secret is not None, f"Secret {name} is referenced but not defined"
    return set(secret.get("stringData", {})) | set(secret.get("data", {}))


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert kustomization["namespace"] == "routeworker"
    (image,) = kustomization["images"]
    assert image["newTag"] == __version__


def test_every_object_is_labelled_and_namespaced_by_kustomize(
    objects: dict[tuple[str, str], Manifest],
) -> None:
    for key, obj in objects.items():
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "routeworker", f"{key} lacks the part-of label"
        assert "namespace" not in obj["metadata"], f"{key}: the namespace comes from kustomization.yaml"


def test_selectors(objects: dict[tuple[str, str], Manifest]) -> None:
    deployment = objects[WORKER]
    selector = deployment["spec"]["selector"]["matchLabels"]
    worker_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(selector, worker_labels)
    job_labels = objects[("Job", "routeworker-topics")]["spec"]["template"]["metadata"]["labels"]
    for key in [("PodDisruptionBudget", "routeworker"), ("Service", "routeworker-metrics")]:
        obj = objects[key]
        chosen = obj["spec"]["selector"].get("matchLabels", obj["spec"]["selector"])
        assert selects(chosen, worker_labels), f"{key} does not select the worker pods"
        assert not selects(chosen, job_labels), f"{key} also selects the topics Job's pod"
    assert not selects(selector, job_labels), "the Deployment would claim the Job's pod"


def test_probes_and_service_use_the_health_port(
    objects: dict[tuple[str, str], Manifest], config: dict[str, str]
) -> None:
    container = worker_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == int(config["ROUTEWORKER_HEALTH_PORT"])
    probes = {
        kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert {kind: probe["port"] for kind, probe in probes.items()} == dict.fromkeys(probes, "health")
    assert probes["livenessProbe"]["path"] == "/livez"
    assert probes["startupProbe"]["path"] == "/livez"
    assert probes["readinessProbe"]["path"] == "/readyz"
    service = objects[("Service", "routeworker-metrics")]
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "health"
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(ports["health"])
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_env_names_are_settings(objects: dict[tuple[str, str], Manifest], config: dict[str, str]) -> None:
    for name in config:
        assert name in SETTING_ENV, f"ConfigMap key {name} is not a field of Settings"
    for key, template in pod_specs(objects):
        for container in containers(template):
            for variable in container.get("env", []):
                assert variable["name"] in SETTING_ENV, f"{key}: {variable['name']} is not a setting"


def test_references_resolve(objects: dict[tuple[str, str], Manifest]) -> None:
    for key, template in pod_specs(objects):
        spec = template["spec"]
        assert ("ServiceAccount", spec["serviceAccountName"]) in objects
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "secret" in volume:
                keys = secret_keys(objects, volume["secret"]["secretName"])
                assert {item["key"] for item in volume["secret"].get("items", [])} <= keys
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in objects
        for container in containers(template):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in objects
                if "secretRef" in source:
                    secret_keys(objects, source["secretRef"]["name"])
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secret_keys(objects, ref["name"]), f"{key}: {ref}"
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{key}: mount of undefined volume {mount['name']}"
    auth = objects[("TriggerAuthentication", "routeworker-kafka")]
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["key"] in secret_keys(objects, ref["name"])
    scaled = objects[("ScaledObject", "routeworker")]
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == WORKER
    for trigger in scaled["spec"]["triggers"]:
        assert ("TriggerAuthentication", trigger["authenticationRef"]["name"]) in objects


def _mounted_at(container: Manifest, volumes: dict[str, Manifest], path: str) -> Manifest:
    for mount in container["volumeMounts"]:
        if PurePosixPath(path).is_relative_to(mount["mountPath"]):
            return volumes[mount["name"]]
    raise AssertionError(f"{path} is on no mounted volume")


def test_store_and_ca_are_on_the_right_volumes(
    objects: dict[tuple[str, str], Manifest], config: dict[str, str]
) -> None:
    for key, template in pod_specs(objects):
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        for container in containers(template):
            ca = _mounted_at(container, volumes, config["ROUTEWORKER_KAFKA_SSL_CAFILE"])
            items = {item["path"] for item in ca["secret"]["items"]}
            assert PurePosixPath(config["ROUTEWORKER_KAFKA_SSL_CAFILE"]).name in items, key
    volumes = {v["name"]: v for v in objects[WORKER]["spec"]["template"]["spec"]["volumes"]}
    store = _mounted_at(worker_container(objects), volumes, config["ROUTEWORKER_STORE_PATH"])
    assert "emptyDir" in store, "the route store is a cache of the log: emptyDir (see deployment.yaml)"


def _container_env(
    objects: dict[tuple[str, str], Manifest], config: dict[str, str], container: Manifest
) -> dict[str, str]:
    env = dict(config)
    for variable in container.get("env", []):
        source = variable.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[variable["name"]] = objects[("Secret", ref["name"])]["stringData"][ref["key"]]
        elif "fieldRef" in source:
            env[variable["name"]] = "routeworker-5d8f7c9b6-x2x7q"  # what metadata.name looks like
        else:
            env[variable["name"]] = str(variable["value"])
    return env


def test_settings_validate_in_every_container(
    objects: dict[tuple[str, str], Manifest], config: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, template in pod_specs(objects):
        for container in containers(template):
            env = _container_env(objects, config, container)
            with monkeypatch.context() as patch:
                for name in [*SETTING_ENV, "ROUTEWORKER_CONFIG_FILE"]:
                    patch.delenv(name, raising=False)
                for name, value in env.items():
                    patch.setenv(name, value)
                settings = load_settings()
            assert settings.kafka_sasl_password is not None, f"{key}: SASL password not wired"
            if key == WORKER:
                assert settings.redis_url is not None, "the worker's Redis URL is not wired"
                grace = template["spec"]["terminationGracePeriodSeconds"]
                assert grace > settings.shutdown_timeout_s, "SIGTERM grace must exceed the drain timeout"


def test_keda_matches_the_configmap_and_the_partitions(
    objects: dict[tuple[str, str], Manifest], config: dict[str, str]
) -> None:
    scaled = objects[("ScaledObject", "routeworker")]["spec"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == config["ROUTEWORKER_GROUP_ID"]
    assert meta["topic"] == config["ROUTEWORKER_TOPIC_QUERIES"]
    assert meta["bootstrapServers"] == config["ROUTEWORKER_KAFKA_BOOTSTRAP"]
    keda_sasl = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    assert meta["sasl"] == keda_sasl[config["ROUTEWORKER_KAFKA_SASL_MECHANISM"]]
    tls = config["ROUTEWORKER_KAFKA_SECURITY_PROTOCOL"] in ("SSL", "SASL_SSL")
    assert meta["tls"] == ("enable" if tls else "disable")
    args = objects[("Job", "routeworker-topics")]["spec"]["template"]["spec"]["containers"][0]["args"]
    partitions = int(args[args.index("--partitions") + 1])
    assert scaled["maxReplicaCount"] == partitions, "more replicas than partitions would sit idle"
    assert 2 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    pdb = objects[("PodDisruptionBudget", "routeworker")]["spec"]
    assert pdb["maxUnavailable"] < scaled["minReplicaCount"], "a drain must leave a replica consuming"
    assert "replicas" not in objects[WORKER]["spec"], "KEDA owns the replica count"


def test_container_args_parse_with_the_real_cli(objects: dict[tuple[str, str], Manifest]) -> None:
    parser = build_parser()
    for key, template in pod_specs(objects):
        for container in containers(template):
            assert "command" not in container, f"{key}: keep the image's routeworker entry point"
            args = parser.parse_args(container["args"])
            assert callable(args.handler), key
    job_args = objects[("Job", "routeworker-topics")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert int(job_args[job_args.index("--replication-factor") + 1]) >= 3, "production topics are replicated"


def test_worker_resources_fit_one_onnx_thread(
    objects: dict[tuple[str, str], Manifest], config: dict[str, str]
) -> None:
    assert config["ROUTEWORKER_ENCODER_THREADS"] == "1"
    resources = worker_container(objects)["resources"]
    assert resources["requests"]["cpu"] == "1", "one core for the single ONNX intra-op thread"
    assert resources["limits"]["memory"] == "1Gi"


def test_images_and_security(objects: dict[tuple[str, str], Manifest]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for key, template in pod_specs(objects):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert f"USER {spec['securityContext']['runAsUser']}:" in dockerfile, f"{key}: uid differs from image"
        assert spec["automountServiceAccountToken"] is False
        for container in containers(template):
            assert container["image"] == f"routeworker:{__version__}"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
