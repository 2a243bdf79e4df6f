"""A real Prometheus scrapes a real worker and a real feed with the project's scrape config and alert rules.

The module fixture starts `python -m stream_app worker`, and `python -m stream_app feed` writing
the worker's embeddings to a real redis-server, renders deploy/prometheus/prometheus.yml to point
at them (1 s scrape and rule evaluation, a temporary data directory), starts Debian's
`prometheus` binary on a free port, sends two waves of events through Kafka and then asks the
Prometheus HTTP API what it saw: every expression of the Grafana dashboard and of the alert
rules must evaluate in a real Prometheus against the real metrics.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer

from bench.feed_process import FeedProcess, feed_env
from bench.redis_server import E_NO_REDIS, RedisServer, redis_binary
from bench.worker_process import WorkerProcess, free_port, worker_env
from stream_app.core.keys import message_key
from stream_app.core.settings import Settings
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.kafka.kafka_connection import ensure_topics
from tests.deploy_config import (
    FEED_JOB,
    PROMETHEUS,
    alert_queries,
    alert_rules,
    dashboard_queries,
    load_yaml,
    ripple_metrics,
)

# Alerts that must stay quiet on a healthy worker with ~2% bad input. The latency alert is
# left out: whether p99 exceeds 1 s on a loaded test machine is timing, not correctness.
QUIET_ALERTS = {
    "RippleWorkerDown",
    "RippleNoWorkerUp",
    "RippleConsumerLagGrowing",
    "RippleStalled",
    "RippleDeadLetterRateHigh",
    "RippleModelVersionMismatch",
    "RippleModelReloadRejected",
    "RippleFeedDown",
    "RippleFeedRedisUnreachable",
    "RippleFeedLagGrowing",
    "RippleFeedInvalidRecords",
}


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        message = "no prometheus binary; install it with `bash deploy/prometheus/install.sh`"
        if os.environ.get("CI") or os.environ.get("RIPPLE_TEST_BROKER"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def render_config(target: str, path: Path, feed_target: str) -> Path:
    """The compose scrape config, pointed at ``target`` (and the feed at ``feed_target``), scraping
    and evaluating every second."""
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    config["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    config["rule_files"] = [str(PROMETHEUS / name) for name in config["rule_files"]]
    for name, where in (("ripple", target), (FEED_JOB, feed_target)):
        (job,) = [j for j in config["scrape_configs"] if j["job_name"] == name]
        job["static_configs"] = [{"targets": [where]}]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class PrometheusServer:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        query = "?" + urllib.parse.urlencode(params) if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        assert body["status"] == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    def wait_for(self, what: str, done: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_prometheus(config: Path, data_dir: Path, log_path: Path) -> PrometheusServer:
    port = free_port()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={config}",
                f"--storage.tsdb.path={data_dir}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", proc, log_path)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    server.wait_for("prometheus to be ready", ready)
    return server


def event_lines(seed: int, n: int) -> list[bytes]:
    lines = list(generate_events(GeneratorSpec(users=20, items=80, events=n, seed=seed, malformed=0.0)))
    stamp = 1_767_400_000 + seed
    unknown = {"event_id": f"odd-{seed}", "user_id": "u1", "item_id": "i1", "action": "teleport", "ts": stamp}
    return [*lines, json.dumps(unknown).encode(), b"{not json"]


@dataclass
class Observed:
    prometheus: PrometheusServer
    worker: WorkerProcess
    counts: tuple[float, float]  # ripple_events_processed_total after each wave
    sent: tuple[int, int]


@pytest.fixture(scope="module")
def observed(broker, tmp_path_factory) -> Iterator[Observed]:
    """The worker and Prometheus stay up while the tests query: a target that goes away
    turns its series stale at once, and instant queries would return nothing."""
    tmp = tmp_path_factory.mktemp("observability")
    if redis_binary() is None:
        pytest.fail(E_NO_REDIS)
    name = f"obs-{os.getpid()}-{int(time.time())}"
    env = worker_env(broker, name, tmp / "state", partitions=2)
    settings = Settings.from_env(env)
    ensure_topics(settings)
    redis_server = RedisServer(tmp / "redis").start()
    fenv = feed_env(broker, redis_server.url, name, settings.output_topic, partitions=2)
    worker = WorkerProcess(env, tmp / "worker.log").start()
    feed = FeedProcess(fenv, tmp / "feed.log").start()
    prometheus: PrometheusServer | None = None
    producer = KafkaProducer(bootstrap_servers=broker, linger_ms=5)
    try:
        worker.wait_healthy(timeout=60)
        feed.wait_healthy(timeout=60)
        config = render_config(
            f"127.0.0.1:{settings.web_port}", tmp / "prometheus.yml", f"127.0.0.1:{fenv['RIPPLE_FEED_WEB_PORT']}"
        )
        if shutil.which("promtool"):
            check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
            assert check.returncode == 0, check.stdout + check.stderr
        prometheus = start_prometheus(config, tmp / "tsdb", tmp / "prometheus.log")
        p = prometheus
        try:
            p.wait_for("the first scrape of the worker", lambda: p.value('sum(up{job="ripple"})') == 1)
            p.wait_for("the first scrape of the feed", lambda: p.value(f'sum(up{{job="{FEED_JOB}"}})') == 1)
        except AssertionError as exc:
            errors = [t.get("lastError") for t in p.api("targets")["activeTargets"]]
            raise AssertionError(f"{exc}; scrape errors: {errors}") from None

        counts: list[float] = []
        sent: list[int] = []
        for wave, n in enumerate((240, 120)):
            lines = event_lines(seed=wave, n=n)
            for line in lines:
                producer.send(settings.input_topic, key=message_key(line), value=line)
            producer.flush()
            sent.append(sum(sent[-1:]) + len(lines))
            target = sent[-1]
            p.wait_for(
                f"{target} processed events in Prometheus",
                lambda t=target: p.value("sum(ripple_events_processed_total)") >= t,
                timeout=60,
            )
            counts.append(p.value("sum(ripple_events_processed_total)"))
        # Lag is reported every few seconds; rules need a couple of evaluations over the new data.
        p.wait_for("the consumer lag gauge", lambda: bool(p.query("ripple_consumer_lag")), timeout=20)
        p.wait_for(
            "the feed to write the published embeddings to Redis",
            lambda: p.value("sum(ripple_feed_written_total)") > 0 and bool(p.query("ripple_feed_lag")),
            timeout=30,
        )
        time.sleep(3)
        yield Observed(p, worker, (counts[0], counts[1]), (sent[0], sent[1]))
    finally:
        producer.close()
        if prometheus is not None:
            prometheus.stop()
        code = worker.stop()
        feed_code = feed.stop()
        redis_server.stop()
    assert code == 0, f"the worker did not stop cleanly:\n{worker.log()}"
    assert feed_code == 0, f"the feed did not stop cleanly:\n{feed.log()}"


@pytest.fixture(scope="module")
def prometheus(observed) -> PrometheusServer:
    return observed.prometheus


def test_the_event_counter_rises_with_each_wave(observed):
    first, second = observed.counts
    assert first >= observed.sent[0]
    assert second >= observed.sent[1] > first


def test_latency_histogram_and_every_ripple_metric_have_samples(prometheus):
    assert prometheus.value("sum(ripple_event_to_publish_seconds_count)") > 0
    assert prometheus.value('sum(ripple_event_to_publish_seconds_bucket{le="+Inf"})') > 0
    present = {r["metric"]["__name__"] for r in prometheus.query('count by (__name__) ({__name__=~"ripple_.*"})')}
    missing = [m.name for m in ripple_metrics().values() if not m.series_names & present]
    assert not missing, f"Prometheus has no series of {missing}"


def test_the_worker_and_feed_targets_are_up(prometheus):
    targets = prometheus.api("targets")["activeTargets"]
    assert sorted(t["labels"]["job"] for t in targets) == ["ripple", FEED_JOB]
    assert all(t["scrapeUrl"].endswith("/metrics") and t["health"] == "up" for t in targets)


@pytest.mark.parametrize("query", dashboard_queries(), ids=lambda q: q.where)
def test_every_dashboard_query_returns_data(prometheus, query):
    result = prometheus.query(query.promql)
    assert result, f"{query.where}: {query.promql} returned nothing"


@pytest.mark.parametrize("query", alert_queries(), ids=lambda q: q.where)
def test_alert_expressions_evaluate_and_healthy_ones_stay_quiet(prometheus, query):
    result = prometheus.query(query.promql)  # fails on a parse or evaluation error
    if query.where.removeprefix("alert ") in QUIET_ALERTS:
        assert result == [], f"{query.where} would fire on a healthy worker: {result}"


def test_prometheus_loaded_and_evaluated_every_alert_rule(prometheus):
    def rules() -> dict[str, dict[str, Any]]:
        groups = prometheus.api("rules")["groups"]
        return {r["name"]: r for g in groups for r in g["rules"]}

    prometheus.wait_for("every rule evaluated", lambda: all(r["health"] != "unknown" for r in rules().values()))
    loaded = rules()
    assert set(loaded) == {rule["alert"] for rule in alert_rules()}
    for name, rule in loaded.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
        if name in QUIET_ALERTS:
            assert rule["state"] == "inactive", f"{name} is {rule['state']}"


def test_down_alert_expressions_fire_once_the_worker_stops(observed, prometheus):
    """Last in this module: it stops the worker the other tests query."""
    assert observed.worker.stop() == 0, observed.worker.log()
    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    for name in ("RippleWorkerDown", "RippleNoWorkerUp"):
        expr = rules[name]
        prometheus.wait_for(f"{name}'s expression to match", lambda e=expr: bool(prometheus.query(e)), timeout=15)
