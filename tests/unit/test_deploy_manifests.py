"""deploy/ agrees with the code: compose, Dockerfile, Kubernetes, Prometheus and Grafana files use
settings that exist with valid values, the same ports and state paths, and only metrics Ripple
exports; docs/operations.md documents every setting, metric and alert."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any
from urllib.parse import urlparse

import pytest

from stream_app.core.settings import ENV_PREFIX, Settings
from tests.deploy_config import (
    COMPOSE,
    DASHBOARD,
    DEPLOY,
    FEED_JOB,
    GRAFANA,
    K8S,
    OPERATIONS,
    PROMETHEUS,
    ROOT,
    TARGET_LABELS,
    alert_queries,
    alert_rules,
    compose_feeds,
    compose_workers,
    dashboard,
    dashboard_queries,
    dockerfile_env,
    dockerfile_instructions,
    feed_metric_names,
    load_yaml,
    load_yaml_all,
    ripple_metrics,
    series_owner,
)

SETTING_NAMES = {name for name, _, _ in Settings.documentation()}


def ripple_env(env: dict[str, Any]) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in env.items() if k.startswith(ENV_PREFIX)}


def assert_valid_settings(env: dict[str, str], where: str) -> Settings:
    unknown = sorted(set(env) - SETTING_NAMES)
    assert not unknown, f"{where} sets {unknown}, which are not Ripple settings (stream_app/core/settings.py)"
    return Settings.from_env(env)  # raises with the setting's own message on a bad value


# ---------------------------------------------------------------- compose ----


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def workers(compose) -> dict[str, dict[str, Any]]:
    return compose_workers(compose)


def test_compose_runs_kafka_kraft_two_workers_prometheus_and_grafana(compose, workers):
    services = compose["services"]
    assert {"kafka", "prometheus", "grafana"} <= set(services)
    assert re.fullmatch(r"apache/kafka:3\.9\.\d+", services["kafka"]["image"])
    kafka_env = services["kafka"]["environment"]
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert len(workers) >= 2
    for name, svc in [*workers.items(), ("kafka", services["kafka"]), ("grafana", services["grafana"])]:
        assert "healthcheck" in svc, f"{name} has no health check"
    assert (ROOT / workers[next(iter(workers))]["build"]["dockerfile"]).is_file()


def test_compose_workers_use_valid_settings_and_wait_for_a_healthy_kafka(compose, workers):
    kafka_env = compose["services"]["kafka"]["environment"]
    internal = {
        urlparse("//" + listener.split("://", 1)[1]).netloc
        for listener in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    for name, svc in workers.items():
        settings = assert_valid_settings(ripple_env(svc["environment"]), f"compose service {name}")
        assert settings.broker.removeprefix("kafka://") in internal, f"{name}: {settings.broker} is no Kafka listener"
        assert svc["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert settings.partitions >= len(workers), "fewer partitions than workers leaves workers idle"
        assert settings.standby_replicas < len(workers)
        assert settings.web_host == "0.0.0.0", f"{name} must listen beyond localhost to be scraped"


def test_compose_worker_ports_health_checks_and_state_volumes_match_the_settings(compose, workers):
    state_volumes = set()
    for name, svc in workers.items():
        settings = Settings.from_env(ripple_env(svc["environment"]))
        container_ports = {int(str(p).rsplit(":", 1)[1]) for p in svc.get("ports", [])}
        assert container_ports <= {settings.web_port}, f"{name} publishes {container_ports}"
        probe = " ".join(svc["healthcheck"]["test"])
        assert f":{settings.web_port}/healthz" in probe, f"{name}'s health check misses /healthz on the web port"
        mounts = dict(reversed(v.split(":")[:2]) for v in svc["volumes"])
        assert settings.state_dir in mounts, f"{name} keeps RocksDB state outside a volume"
        volume = mounts[settings.state_dir]
        assert volume in compose["volumes"], f"{name}: state volume {volume} is not a named volume"
        state_volumes.add(volume)
    assert len(state_volumes) == len(workers), "each worker needs its own RocksDB volume"


def test_compose_runs_redis_and_a_feed_from_the_worker_image_with_valid_settings(compose, workers):
    services = compose["services"]
    feeds = compose_feeds(compose)
    assert len(feeds) == 1 and "redis" in services
    redis = services["redis"]
    assert re.fullmatch(r"redis:\d+(\.\d+)*", redis["image"])
    assert "--appendonly" in redis["command"], "Redis must persist what the feed committed"
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])
    worker_settings = Settings.from_env(ripple_env(next(iter(workers.values()))["environment"]))
    for name, svc in feeds.items():
        settings = assert_valid_settings(ripple_env(svc["environment"]), f"compose service {name}")
        assert svc["build"] == next(iter(workers.values()))["build"], "the feed runs the worker image"
        assert urlparse(settings.redis_url).hostname == "redis"
        for dependency in ("kafka", "redis"):
            assert svc["depends_on"][dependency]["condition"] == "service_healthy"
        # It reads what the workers publish, and checks the topics they create alike.
        for field in ("broker", "output_topic", "input_topic", "partitions"):
            assert getattr(settings, field) == getattr(worker_settings, field), field
        assert settings.web_host == "0.0.0.0", f"{name} must listen beyond localhost to be scraped"
        assert {int(str(p).rsplit(":", 1)[1]) for p in svc.get("ports", [])} <= {settings.feed_web_port}
        assert f":{settings.feed_web_port}/healthz" in " ".join(svc["healthcheck"]["test"])
    assert "redis-data" in compose["volumes"]


def test_each_compose_worker_has_its_own_static_group_identity(workers):
    ids = [Settings.from_env(ripple_env(svc["environment"])).group_instance_id() for svc in workers.values()]
    assert all(ids) and len(set(ids)) == len(ids), ids


def test_compose_mounts_files_that_exist(compose):
    for name in ("prometheus", "grafana"):
        for volume in compose["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"


def test_dockerfile_defaults_match_the_compose_workers(workers):
    instructions = dockerfile_instructions()
    env = dockerfile_env()
    settings = assert_valid_settings(ripple_env(env), "deploy/Dockerfile")
    exposed = {int(p) for word, rest in instructions if word == "EXPOSE" for p in rest.split()}
    assert exposed == {settings.web_port}
    volumes = [rest for word, rest in instructions if word == "VOLUME"]
    assert any(settings.state_dir in v for v in volumes)
    assert ("CMD", '["worker"]') in instructions and ("ENTRYPOINT", '["ripple"]') in instructions
    for name, svc in workers.items():
        worker = Settings.from_env(ripple_env(svc["environment"]))
        assert (worker.web_port, worker.state_dir) == (settings.web_port, settings.state_dir), name


# -------------------------------------------------------------- kubernetes ----


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in load_yaml_all(path):
            if doc.get("kind") != "Kustomization":
                docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def test_kustomization_lists_existing_files_without_optional_crds():
    kustomization = load_yaml(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
        kinds = {doc["kind"] for doc in load_yaml_all(K8S / resource)}
        assert "ServiceMonitor" not in kinds, "CRD-based resources stay in extras/"


def test_configmap_holds_valid_ripple_settings(k8s):
    data = k8s["ConfigMap/ripple-settings"]["data"]
    assert all(key.startswith(ENV_PREFIX) for key in data)
    settings = assert_valid_settings(data, "ConfigMap ripple-settings")
    assert settings.web_host == "0.0.0.0"


def test_statefulset_matches_configmap_service_and_volumes(k8s):
    sts = k8s["StatefulSet/ripple"]
    settings = Settings.from_env(k8s["ConfigMap/ripple-settings"]["data"])
    pod = sts["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert {"configMapRef": {"name": "ripple-settings"}} in container["envFrom"]
    assert_valid_settings(ripple_env({e["name"]: e.get("value") for e in container.get("env", [])}), "StatefulSet")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"web": settings.web_port}
    for probe in ("readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "web"}, probe
    assert container["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "web"}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == settings.web_port
    assert annotations["prometheus.io/path"] == "/metrics"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {c["metadata"]["name"]: c for c in sts["spec"]["volumeClaimTemplates"]}
    assert mounts.get(settings.state_dir) in claims, "RocksDB state must live on the pod's own volume"
    replicas = sts["spec"]["replicas"]
    assert replicas <= settings.partitions, "workers beyond the partition count sit idle"
    assert settings.standby_replicas < replicas
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 30
    # table_route redirects to the owner's advertised hostname: it must resolve from other pods.
    assert pod["spec"]["setHostnameAsFQDN"] is True


def test_statefulset_pods_are_static_group_members_named_after_the_pod(k8s):
    (container,) = k8s["StatefulSet/ripple"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RIPPLE_INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    settings = Settings.from_env({**k8s["ConfigMap/ripple-settings"]["data"], "RIPPLE_INSTANCE_ID": "ripple-0"})
    assert settings.group_instance_id() == "ripple-0"


def test_statefulset_resources_have_requests_within_limits(k8s):
    (container,) = k8s["StatefulSet/ripple"]["spec"]["template"]["spec"]["containers"]
    resources = container["resources"]

    def cpu(v: str) -> float:
        return float(v[:-1]) / 1000 if str(v).endswith("m") else float(v)

    def mem(v: str) -> float:
        units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
        return float(v[:-2]) * units[v[-2:]] if v[-2:] in units else float(v)

    assert cpu(resources["requests"]["cpu"]) <= cpu(resources["limits"]["cpu"])
    assert mem(resources["requests"]["memory"]) <= mem(resources["limits"]["memory"])
    assert mem(resources["requests"]["memory"]) >= 512 << 20, "torch + Faust alone need about half a GiB"


def test_feed_deployment_reads_the_configmap_and_serves_metrics_on_the_feed_port(k8s):
    deployment = k8s["Deployment/ripple-feed"]
    settings = Settings.from_env(k8s["ConfigMap/ripple-settings"]["data"])
    assert urlparse(settings.redis_url).scheme == "redis"
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["feed"]
    assert container["image"] == k8s["StatefulSet/ripple"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert {"configMapRef": {"name": "ripple-settings"}} in container["envFrom"]
    assert {e["name"] for e in container.get("env", [])} <= SETTING_NAMES
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": settings.feed_web_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == settings.feed_web_port
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= deployment["spec"]["replicas"] <= settings.partitions
    # Neither the workers' Service, their PodDisruptionBudget nor their StatefulSet may select feed pods.
    for selector in (
        k8s["Service/ripple"]["spec"]["selector"],
        k8s["PodDisruptionBudget/ripple"]["spec"]["selector"]["matchLabels"],
        k8s["StatefulSet/ripple"]["spec"]["selector"]["matchLabels"],
    ):
        assert not selector.items() <= labels.items()
    service = k8s["Service/ripple-feed"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "metrics"
    monitor = k8s["ServiceMonitor/ripple-feed"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port["name"]]


def test_headless_service_selects_the_worker_pods_on_the_web_port(k8s):
    sts, svc = k8s["StatefulSet/ripple"], k8s["Service/ripple"]
    assert sts["spec"]["serviceName"] == "ripple" and svc["spec"]["clusterIP"] == "None"
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert k8s["PodDisruptionBudget/ripple"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] == "web"
    monitor = k8s["ServiceMonitor/ripple"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port["name"]]


# -------------------------------------------------------------- prometheus ----


def test_prometheus_scrapes_every_compose_worker_on_its_web_port(compose, workers):
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ripple"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    expected = {f"{name}:{Settings.from_env(ripple_env(svc['environment'])).web_port}" for name, svc in workers.items()}
    assert targets == expected
    (feed_job,) = [j for j in config["scrape_configs"] if j["job_name"] == FEED_JOB]
    feeds = compose_feeds(compose)
    assert {t for sc in feed_job["static_configs"] for t in sc["targets"]} == {
        f"{name}:{Settings.from_env(ripple_env(svc['environment'])).feed_web_port}" for name, svc in feeds.items()
    }
    assert job.get("metrics_path", "/metrics") == "/metrics"
    for rules in config["rule_files"]:
        assert (PROMETHEUS / rules).is_file()


def test_kubernetes_scrape_config_keeps_the_job_name_the_alerts_use():
    config = load_yaml(PROMETHEUS / "prometheus-k8s.yml")
    assert [j["job_name"] for j in config["scrape_configs"]] == ["ripple", FEED_JOB]
    components = [
        rule["regex"]
        for job in config["scrape_configs"]
        for rule in job["relabel_configs"]
        if rule["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
    ]
    assert components == ["worker", "feed"], "each job keeps only its own pods"
    assert config["rule_files"] == load_yaml(PROMETHEUS / "prometheus.yml")["rule_files"]


@pytest.mark.parametrize("query", dashboard_queries() + alert_queries(), ids=lambda q: q.where)
def test_queries_use_only_metrics_and_labels_ripple_exports(query):
    owners = series_owner()
    names = query.metric_names
    assert names, f"{query.where} reads no metric"
    unknown = sorted(n for n in names if n != "up" and n not in owners)
    assert not unknown, f"{query.where} uses {unknown}, not defined in stream_app/core/metrics.py"
    labels = set(TARGET_LABELS)
    for name in names - {"up"}:
        labels |= set(owners[name].labels)
    assert query.grouping_labels <= labels, f"{query.where}: unknown labels {query.grouping_labels - labels}"


def test_alert_rules_cover_down_lag_dead_letters_and_latency():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    wanted = {"RippleWorkerDown", "RippleConsumerLagGrowing", "RippleDeadLetterRateHigh", "RippleEventLatencyP99High"}
    wanted |= {"RippleFeedDown", "RippleFeedRedisUnreachable", "RippleFeedLagGrowing"}
    assert wanted <= set(rules)
    for name, rule in rules.items():
        # The feed's metrics come from the feed's job, the workers' from theirs.
        feed_rule = bool(set(re.findall(r"\bripple_feed_\w+", rule["expr"]))) or FEED_JOB in rule["expr"]
        assert feed_rule == name.startswith("RippleFeed"), name
        assert (f'job="{FEED_JOB}"' in rule["expr"]) == feed_rule, name
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (deploy/prometheus/install.sh)")
@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ],
    ids=" ".join,
)
def test_promtool_accepts_config_and_rules_and_the_alert_unit_tests_pass(args):
    done = subprocess.run(["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# ----------------------------------------------------------------- grafana ----


def test_dashboard_panels_cover_the_issue_list_and_lay_out_cleanly():
    dash = dashboard()
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        own = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not own & cells, f"panel {p['title']!r} overlaps another"
        cells |= own
    used = {name for q in dashboard_queries() for name in q.metric_names}
    wanted = {
        "ripple_events_processed_total",
        "ripple_dead_letters_total",
        "ripple_event_to_publish_seconds_bucket",
        "ripple_batch_size_bucket",
        "ripple_embed_seconds_bucket",
        "ripple_consumer_lag",
        "ripple_users_in_state",
        "ripple_model_info",
    }
    wanted |= {"ripple_feed_written_total", "ripple_feed_skipped_stale_total", "ripple_feed_deleted_total"}
    wanted |= {"ripple_feed_lag", "ripple_feed_redis_up", "ripple_feed_write_seconds_bucket"}
    assert wanted <= used, f"dashboard lacks {wanted - used}"
    for q in dashboard_queries():  # feed panels select the feed job, worker panels the workers'
        feed_query = bool(q.metric_names & {s for n in feed_metric_names() for s in ripple_metrics()[n].series_names})
        assert ("$feed_job" in q.expr) == feed_query or "up{" in q.expr, q.where
    outcome_panel = next(p for p in panels if "outcome" in p["targets"][0]["expr"])
    assert "by (outcome)" in outcome_panel["targets"][0]["expr"]
    variables = {v["name"] for v in dash["templating"]["list"]}
    for q in dashboard_queries():
        assert {v.removeprefix("$") for v in re.findall(r"\$\w+", q.expr)} - {"__rate_interval"} <= variables


def test_grafana_provisioning_points_at_prometheus_and_the_mounted_dashboard(compose):
    (source,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus"
    url = urlparse(source["url"])
    assert (
        url.hostname in compose["services"] and f"{url.port}:{url.port}" in compose["services"]["prometheus"]["ports"]
    )
    datasource_var = next(v for v in dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert datasource_var["current"]["value"] == source["uid"]
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "ripple.yml")["providers"]
    mounts = [v.split(":") for v in compose["services"]["grafana"]["volumes"]]
    dashboard_mount = next(target for src, target, *_ in mounts if src.endswith(DASHBOARD.name))
    assert dashboard_mount.rsplit("/", 1)[0] == provider["options"]["path"]


# -------------------------------------------------------------------- docs ----


@pytest.fixture(scope="module")
def operations() -> str:
    return OPERATIONS.read_text()


def test_operations_guide_documents_every_setting_with_its_default(operations):
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(RIPPLE_\w+)` \| `([^`]*)` \|", operations, re.M)}
    missing = sorted(SETTING_NAMES - set(rows))
    assert not missing, f"docs/operations.md lacks settings {missing} (run `python -m tests.deploy_config`)"
    stale = sorted(set(rows) - SETTING_NAMES)
    assert not stale, f"docs/operations.md documents settings that no longer exist: {stale}"
    for name, default, _ in Settings.documentation():
        assert rows[name] == default, f"{name}: docs say {rows[name]!r}, code says {default!r}"


def test_operations_guide_documents_every_metric_and_alert(operations):
    documented = set(re.findall(r"^\| `(ripple_\w+)`", operations, re.M))
    assert set(ripple_metrics()) == documented, (
        "metrics table of docs/operations.md is out of date: run `python -m tests.deploy_config`"
    )
    for rule in alert_rules():
        assert f"`{rule['alert']}`" in operations, f"alert {rule['alert']} is not documented"


def test_yaml_files_parse():
    for path in [*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")]:
        assert load_yaml_all(path), f"{path} is empty"
