"""docker-compose.yml checked without Docker: names, settings, wiring, pinned images.

Docker does not run here, so the compose file is loaded with PyYAML (which resolves the `<<` merge
keys compose uses) and checked against the code it deploys: every ROUTEWORKER_* variable is a
setting and its value validates, the services it names exist, and the side files agree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from worker import __version__
from worker.cli.main import build_parser
from worker.config import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SETTING_ENV = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::?-(?P<default>[^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set in the environment: the defaults."""
    return _INTERPOLATION.sub(lambda m: m.group("default") or "", value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): interpolate(str(v)) for k, v in env.items()}


def routeworker_services(services: dict[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, service in services.items():
        if service.get("image", "").startswith("routeworker:"):
            yield name, service


def workers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in routeworker_services(services) if s.get("command") == ["run"]}


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Load Settings exactly as the container would, from this environment only."""
    with monkeypatch.context() as patch:
        for name in [*SETTING_ENV, "ROUTEWORKER_CONFIG_FILE"]:
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        return load_settings()


def test_every_routeworker_variable_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for variable in env_of(service):
            if variable.startswith(ENV_PREFIX):
                assert variable in SETTING_ENV, f"{name}: {variable} is not a field of Settings (typo?)"


def test_routeworker_environments_validate(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = 0
    for _, service in routeworker_services(services):
        env = {k: v for k, v in env_of(service).items() if k.startswith(ENV_PREFIX)}
        settings = settings_from(env, monkeypatch)
        assert settings.kafka_bootstrap == "kafka:9092"
        seen += 1
    assert seen >= 5  # topics, routes, two workers, demo producer


def test_topic_names_are_the_settings_defaults(services: dict[str, dict[str, Any]]) -> None:
    defaults = {f"{ENV_PREFIX}{n.upper()}": f.default for n, f in Settings.model_fields.items()}
    for name, service in routeworker_services(services):
        env = env_of(service)
        for variable in ("TOPIC_QUERIES", "TOPIC_INTENTS", "TOPIC_MUTATIONS", "TOPIC_DLQ", "GROUP_ID"):
            full = ENV_PREFIX + variable
            assert env.get(full, defaults[full]) == defaults[full], f"{name}: {full}"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} has no image"
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: image {image} has no tag"
        assert tag, f"{name}: image {image} has no tag"
        assert "/" not in tag, f"{name}: image {image} has no tag"
        assert tag != "latest", f"{name}: image {image} is not pinned"
        if "build" in service:
            assert image == f"routeworker:{__version__}", f"{name}: built image must carry the version"
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


def _has_healthcheck(service: dict[str, Any]) -> bool:
    if "healthcheck" in service:
        return not service["healthcheck"].get("disable", False)
    # a built service inherits the Dockerfile's HEALTHCHECK
    return "build" in service and "HEALTHCHECK" in (ROOT / "Dockerfile").read_text()


def test_depends_on_is_consistent_and_acyclic(services: dict[str, dict[str, Any]]) -> None:
    graph: dict[str, set[str]] = {}
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {target: {"condition": "service_started"} for target in depends}
        graph[name] = set(depends)
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = spec.get("condition", "service_started")
            assert condition in {"service_started", "service_healthy", "service_completed_successfully"}
            if condition == "service_healthy":
                assert _has_healthcheck(services[target]), (
                    f"{name} waits for {target} healthy: no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", (
                    f"{target} is a job: it must not restart"
                )
    done: set[str] = set()
    while len(done) < len(graph):
        ready = {n for n, deps in graph.items() if n not in done and deps <= done}
        assert ready, f"depends_on cycle among {sorted(set(graph) - done)}"
        done |= ready


def test_volumes_networks_and_bind_mounts_exist(compose: dict[str, Any]) -> None:
    declared_volumes = set(compose.get("volumes") or {})
    declared_networks = set(compose.get("networks") or {})
    used_volumes: set[str] = set()
    for name, service in compose["services"].items():
        networks = service.get("networks") or []
        assert networks, f"{name} is on no declared network"
        for network in networks:
            assert network in declared_networks, f"{name}: undeclared network {network}"
        for mount in service.get("volumes") or []:
            source = mount.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared_volumes, f"{name}: undeclared volume {source}"
                used_volumes.add(source)
    assert used_volumes == declared_volumes, "every declared volume is used"


def test_each_worker_replica_has_its_own_store(services: dict[str, dict[str, Any]]) -> None:
    replicas = workers(services)
    assert len(replicas) >= 2
    stores, ids = set(), set()
    for name, service in replicas.items():
        env = env_of(service)
        store_dir = str(Path(env["ROUTEWORKER_STORE_PATH"]).parent)
        mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
        assert store_dir in mounts, f"{name}: the store directory is not on a volume"
        stores.add(mounts[store_dir])
        ids.add(env["ROUTEWORKER_REPLICA_ID"])
        assert service["healthcheck"]["test"][-1] == "/readyz"
    assert len(stores) == len(replicas), "replicas must not share a SQLite store"
    assert len(ids) == len(replicas), "replica ids must differ"


def test_kafka_runs_kraft_and_advertises_the_bootstrap(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = env_of(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in k for k in env)
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    advertised = {entry.split("://", 1)[1] for entry in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    listener_names = {entry.split("://", 1)[0] for entry in env["KAFKA_LISTENERS"].split(",")}
    protocol_map = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert listener_names == set(protocol_map)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listener_names
    for _, service in routeworker_services(services):
        assert env_of(service)["ROUTEWORKER_KAFKA_BOOTSTRAP"] in advertised


def test_redis_url_matches_the_redis_service(services: dict[str, dict[str, Any]]) -> None:
    command = [interpolate(str(part)) for part in services["redis"]["command"]]
    password = command[command.index("--requirepass") + 1]
    for _, service in routeworker_services(services):
        url = urlsplit(env_of(service)["ROUTEWORKER_REDIS_URL"])
        assert (url.hostname, url.port, url.password) == ("redis", 6379, password)


def test_commands_parse_with_the_real_cli(services: dict[str, dict[str, Any]]) -> None:
    parser = build_parser()
    for name, service in routeworker_services(services):
        if "entrypoint" in service:
            continue  # not the routeworker entry point (the demo producer)
        args = parser.parse_args(service["command"])
        assert callable(args.handler), name


def test_jobs_and_commands(services: dict[str, dict[str, Any]]) -> None:
    topics = services["topics"]["command"]
    assert topics[:2] == ["topics", "create"]
    partitions = int(topics[topics.index("--partitions") + 1])
    assert 2 <= len(workers(services)) <= partitions, "a replica beyond the partition count idles"
    assert services["routes"]["command"] == ["routes", "apply", "/app/examples/routes.yaml"]
    assert "COPY examples /app/examples" in (ROOT / "Dockerfile").read_text()
    routes = yaml.safe_load((ROOT / "examples" / "routes.yaml").read_text())
    assert routes, "the example route file holds routes"
    assert all(route["name"] and route["utterances"] for route in routes)
    producer = services["demo-producer"]
    script = producer["entrypoint"][-1]
    assert f"COPY deploy/compose/demo_producer.py {script}" in (ROOT / "Dockerfile").read_text()


def test_telemetry_wiring(services: dict[str, dict[str, Any]]) -> None:
    collector_config = yaml.safe_load((ROOT / "deploy/compose/otel-collector.yaml").read_text())
    http_port = int(collector_config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].rsplit(":", 1)[1])
    for _, service in routeworker_services(services):
        endpoint = urlsplit(env_of(service)["ROUTEWORKER_OTLP_ENDPOINT"])
        assert endpoint.hostname in services
        assert services[endpoint.hostname]["image"].startswith("otel/opentelemetry-collector")
        assert endpoint.port == http_port
    jaeger_host = collector_config["exporters"]["otlp/jaeger"]["endpoint"].split(":")[0]
    assert jaeger_host in services
    pipelines = collector_config["service"]["pipelines"]
    for pipeline in pipelines.values():
        for part in ("receivers", "processors", "exporters"):
            for component in pipeline.get(part, []):
                assert component in collector_config[part], f"pipeline uses undefined {component}"

    prometheus = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    expected = {f"{name}:{env_of(s)['ROUTEWORKER_HEALTH_PORT']}" for name, s in workers(services).items()}
    assert expected <= targets, "Prometheus scrapes every replica's health port"
    exporter_port = collector_config["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    assert f"otel-collector:{exporter_port}" in targets
    for target in targets:
        assert target.split(":")[0] in services, f"Prometheus target {target} is not a service"


def test_grafana_is_provisioned_beside_prometheus(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    assert "prometheus" in grafana["depends_on"]
    mounts = {source: target for source, target, *_ in (m.split(":") for m in grafana["volumes"])}
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    sources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())
    (source,) = sources["datasources"]
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus"
    assert url.port == 9090
    assert any(str(p).endswith(":9090") for p in services["prometheus"]["ports"])
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/routeworker.yaml").read_text())
    dashboards_in = providers["providers"][0]["options"]["path"]
    assert mounts["./deploy/grafana/dashboards"] == dashboards_in
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/routeworker.json").read_text())
    used = {p["datasource"]["uid"] for p in dashboard["panels"]} | {
        t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]
    }
    assert used == {source["uid"]}
