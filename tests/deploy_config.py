"""The deploy/ files as data, for the manifest and observability tests: YAML/JSON documents,
PromQL expressions of the dashboard and alert rules, and the metrics Ripple defines."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

from stream_app.core.metrics import FeedMetrics, Metrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "ripple-dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"

# Labels Prometheus attaches to every scraped series (or that histogram buckets carry).
TARGET_LABELS = {"job", "instance", "le", "pod", "namespace"}
# What Grafana substitutes before a panel query reaches Prometheus; the tests do the same.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": "ripple", "$instance": ".*", "$feed_job": "ripple-feed"}
FEED_JOB = "ripple-feed"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@dataclass(frozen=True)
class MetricDef:
    """One metric of :class:`stream_app.core.metrics.Metrics`: what Prometheus sees of it."""

    name: str
    kind: str
    labels: tuple[str, ...]
    doc: str

    @property
    def series_names(self) -> set[str]:
        if self.kind == "counter":
            base = self.name.removesuffix("_total")
            return {base + "_total", base + "_created"}
        if self.kind == "histogram":
            return {self.name + suffix for suffix in ("_bucket", "_sum", "_count", "_created")}
        return {self.name}


def ripple_metrics() -> dict[str, MetricDef]:
    """Every metric Ripple defines, by name (counters with their ``_total``): the worker's, then the feed's."""
    out = {}
    for metrics in (Metrics(), FeedMetrics()):
        for value in vars(metrics).values():
            if isinstance(value, MetricWrapperBase):
                kind = value._type
                name = value._name + "_total" if kind == "counter" else value._name
                out[name] = MetricDef(name, kind, tuple(value._labelnames), value._documentation)
    return out


def feed_metric_names() -> set[str]:
    """The metrics of ``ripple feed`` (served by the feed, not by the workers)."""
    return {name for name in ripple_metrics() if name.startswith("ripple_feed_")}


def series_owner() -> dict[str, MetricDef]:
    """Series name as PromQL uses it (``ripple_batch_size_bucket``) → its metric."""
    return {series: m for m in ripple_metrics().values() for series in m.series_names}


@dataclass(frozen=True)
class Query:
    """One PromQL expression from the dashboard or the alert rules."""

    where: str
    expr: str

    @property
    def promql(self) -> str:
        """The expression as Prometheus receives it (Grafana variables substituted)."""
        out = self.expr
        for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
            out = out.replace(name, value)
        return out

    @property
    def metric_names(self) -> set[str]:
        names = set(re.findall(r"\bripple_[a-z0-9_]+", self.promql))
        return names | ({"up"} if re.search(r"\bup\s*\{", self.promql) else set())

    @property
    def grouping_labels(self) -> set[str]:
        labels: set[str] = set()
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", self.promql):
            labels |= {part.strip() for part in group.split(",") if part.strip()}
        for matchers in re.findall(r"\{([^}]*)\}", self.promql):
            labels |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
        return labels


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[Query]:
    return [
        Query(f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]]


def alert_queries() -> list[Query]:
    return [Query(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]


def compose_workers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services that run the Ripple image as a worker (its default command)."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if svc.get("build", {}).get("dockerfile") == "deploy/Dockerfile" and svc.get("command") in (None, ["worker"])
    }


def compose_feeds(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services that run the Ripple image as ``ripple feed``."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if svc.get("build", {}).get("dockerfile") == "deploy/Dockerfile" and svc.get("command") == ["feed"]
    }


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


def settings_table() -> list[str]:
    from stream_app.core.settings import Settings

    rows = ["| variable | default | meaning |", "|---|---|---|"]
    return rows + [f"| `{name}` | `{default}` | {doc} |" for name, default, doc in Settings.documentation()]


def metrics_table() -> list[str]:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for m in ripple_metrics().values():
        labels = ", ".join(f"`{label}`" for label in m.labels) or "—"
        rows.append(f"| `{m.name}` | {m.kind} | {labels} | {m.doc} |")
    return rows


def render_operations(text: str) -> str:
    """docs/operations.md with its settings and metrics tables regenerated from the code."""
    for marker, rows in (("settings", settings_table()), ("metrics", metrics_table())):
        begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + begin + "\n" + "\n".join(rows) + "\n" + end + tail
    return text


if __name__ == "__main__":
    # python -m tests.deploy_config: rewrite the reference tables of docs/operations.md.
    OPERATIONS.write_text(render_operations(OPERATIONS.read_text()))
    print(f"updated {OPERATIONS.relative_to(ROOT)}")
