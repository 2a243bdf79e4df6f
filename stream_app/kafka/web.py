"""Web views on the worker's Faust web server: a user's embedding and recommendations, health, Prometheus metrics.

``GET /users/{user_id}/embedding`` is routed (``table_route``) to the worker that
owns the user's partition. It embeds the stored graph from scratch, which equals
the last published vector (streaming equals batch), so it needs no second copy of
every embedding: the table is the single source of truth. It answers in
``RIPPLE_EMBEDDING_ENCODING`` unless ``?encoding=json|f32`` asks otherwise.

``GET /healthz`` is 200 ``ok`` once tables are recovered and no rebalance runs (503
``starting`` before), and 200 ``degraded`` for a while after the worker skipped a record
batch it cannot decode (``stream_app/kafka/undecodable.py``).

``GET /users/{user_id}/recommendations?k=20&exclude_seen=1`` ranks the serving model's items
for that vector as ``ripple evaluate`` does (``stream_app/core/recommend.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import PrometheusMonitor, setup_prometheus_sensors
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from operators.explain import explain
from stream_app.core.embedding_format import embedding_record
from stream_app.core.recommend import parse_request, recommendations_of
from stream_app.core.settings import EMBEDDING_ENCODINGS

if TYPE_CHECKING:
    from stream_app.kafka.faust_app import StreamWorker

E_UNKNOWN_USER = "no state for user {user!r}: no valid event of this user has been processed (yet)."
E_ENCODING = "unknown encoding {encoding!r}: use ?encoding=json (numbers) or ?encoding=f32 (base64 float32)."


def add_views(worker: StreamWorker) -> None:
    app, store, pipeline = worker.app, worker.store, worker.pipeline

    @app.page("/users/{user_id}/embedding")
    @app.table_route(table=worker.table, match_info="user_id")
    async def user_embedding(web: Any, request: Any, user_id: str) -> Any:
        graphs = store.get_many([user_id])
        graph = graphs.get(user_id)
        if graph is None:
            return web.json({"error": E_UNKNOWN_USER.format(user=user_id)}, status=404)
        (embedding,) = pipeline.embed({user_id: graph})
        encoding = request.query.get("encoding", worker.settings.embedding_encoding)
        if encoding not in EMBEDDING_ENCODINGS:
            return web.json({"error": E_ENCODING.format(encoding=encoding)}, status=400)
        return web.json(embedding_record(embedding, encoding))

    @app.page("/users/{user_id}/explanation")
    @app.table_route(table=worker.table, match_info="user_id")
    async def user_explanation(web: Any, request: Any, user_id: str) -> Any:
        graph = store.get_many([user_id]).get(user_id)
        if graph is None:
            return web.json({"error": E_UNKNOWN_USER.format(user=user_id)}, status=404)
        top = int(request.query.get("top", "10"))
        parts = explain(pipeline.embedder.checkpoint, graph, max(1, min(top, graph.n_nodes)))
        return web.json(
            {
                "user_id": user_id,
                "state_version": graph.state_version,
                "model_version": pipeline.embedder.model_version,
                "attribution": "share = node contribution projected on the user vector; all nodes sum to 1",
                "behaviours": [asdict(p) for p in parts],
            }
        )

    @app.page("/users/{user_id}/recommendations")
    @app.table_route(table=worker.table, match_info="user_id")
    async def user_recommendations(web: Any, request: Any, user_id: str) -> Any:
        graph = store.get_many([user_id]).get(user_id)
        if graph is None:
            return web.json({"error": E_UNKNOWN_USER.format(user=user_id)}, status=404)
        try:
            k, exclude_seen = parse_request(request.query)
        except ValueError as exc:
            return web.json({"error": str(exc)}, status=400)
        embedder = pipeline.embedder
        vectors = embedder.embed_many([graph])
        try:
            (body,) = recommendations_of(
                pipeline.recommender, embedder.checkpoint, vectors, [user_id], [graph], k, exclude_seen
            )
        except ValueError as exc:  # a model without items (the seeded default)
            return web.json({"error": str(exc)}, status=409)
        return web.json(body)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        recovered = app.tables.recovery.completed.is_set()
        ok = recovered and not app.rebalancing
        # Degraded still answers 200: the worker serves, but skipped input it could not decode.
        degraded = worker.degraded()
        body: dict[str, Any] = {
            "status": ("degraded" if degraded else "ok") if ok else "starting",
            "recovered": recovered,
            "rebalancing": bool(app.rebalancing),
            "model_version": pipeline.embedder.model_version,
        }
        if worker.last_undecodable is not None:
            body["undecodable_batches"] = len(worker.undecodable_seen)
            body["last_undecodable"] = {
                "at": worker.last_undecodable_at,
                "reason": worker.last_undecodable.reason,
                "detail": worker.last_undecodable.message(),
            }
        return web.json(body, status=200 if ok else 503)

    # Faust's own metrics join Ripple's on one registry; the page is GET /metrics.
    setup_prometheus_sensors(app, pattern="/metrics", registry=worker.metrics.registry, name_prefix="faust")
    metrics = app.monitor._metrics
    app.monitor = LeanPrometheusMonitor(metrics=metrics)
    registry = worker.metrics.registry
    for per_message in PER_MESSAGE_METRICS:
        registry.unregister(getattr(metrics, per_message))
    registry.register(MonitorCounts(app.monitor))


PER_MESSAGE_METRICS = (
    "messages_received",
    "active_messages",
    "messages_received_per_topics",
    "messages_received_per_topics_partition",
    "events_runtime_latency",
    "total_events",
    "total_active_events",
    "total_events_per_stream",
    "topic_messages_sent",
    "total_sent_messages",
    "producer_send_latency",
    "topic_partition_end_offset",
)
"""Faust metrics its ``PrometheusMonitor`` updates for every message, event or send."""


class LeanPrometheusMonitor(PrometheusMonitor):
    """Faust's Prometheus sensors without their per-message work.

    ``PrometheusMonitor`` updates about ten Prometheus metrics, four of them labelled, for
    every message, stream event, send and fetch: about a tenth of the worker's CPU under py-spy
    (``bench/worker_ceiling.py --profile``). Those hooks keep only the plain counters of
    Faust's base ``Monitor`` (what every Faust app pays), and :class:`MonitorCounts` turns
    the counters into the same ``faust_*`` samples when Prometheus scrapes. The per-event
    latency histograms (``faust_events_runtime_ms``, ``faust_producer_send_latency``) are
    left out; commits, rebalances, assignments, table operations and web requests are
    reported as before.
    """

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        Monitor.on_message_in(self, tp, offset, message)

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> dict | None:
        return Monitor.on_stream_event_in(self, tp, offset, stream, event)

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: dict | None = None) -> None:
        Monitor.on_stream_event_out(self, tp, offset, stream, event, state)

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        Monitor.on_message_out(self, tp, offset, message)

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> Any:
        return Monitor.on_send_initiated(self, producer, topic, message, keysize, valsize)

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        Monitor.on_send_completed(self, producer, state, metadata)

    def track_tp_end_offset(self, tp: Any, offset: int) -> None:
        Monitor.track_tp_end_offset(self, tp, offset)


class MonitorCounts(Collector):
    """The per-message ``faust_*`` counters and gauges, read from Faust's ``Monitor`` at scrape time."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        m = self.monitor
        yield CounterMetricFamily("faust_messages_received", "Total messages received", m.messages_received_total)
        yield GaugeMetricFamily("faust_active_messages", "Total active messages", m.messages_active)
        per_topic = CounterMetricFamily(
            "faust_messages_received_per_topic", "Messages received per topic", labels=["topic"]
        )
        for topic, count in list(m.messages_received_by_topic.items()):
            per_topic.add_metric([topic], count)
        yield per_topic
        offsets = GaugeMetricFamily(
            "faust_messages_received_per_topics_partition",
            "Messages received per topic/partition",
            labels=["topic", "partition"],
        )
        for tp, offset in list(m.tp_read_offsets.items()):
            offsets.add_metric([tp.topic, str(tp.partition)], offset)
        yield offsets
        yield CounterMetricFamily("faust_total_events", "Total events received", m.events_total)
        yield GaugeMetricFamily("faust_total_active_events", "Total active events", m.events_active)
        per_stream = CounterMetricFamily(
            "faust_total_events_per_stream", "Events received per Stream", labels=["stream"]
        )
        for stream, count in list(m.events_by_stream.items()):
            per_stream.add_metric([str(stream)], count)
        yield per_stream
        sent = CounterMetricFamily("faust_topic_messages_sent", "Total messages sent per topic", labels=["topic"])
        for topic, count in list(m.messages_sent_by_topic.items()):
            sent.add_metric([f"topic.{topic}"], count)
        yield sent
        yield CounterMetricFamily("faust_total_sent_messages", "Total messages sent", m.messages_sent)
        ends = GaugeMetricFamily(
            "faust_topic_partition_end_offset", "Offset ends per topic/partition", labels=["topic", "partition"]
        )
        for tp, offset in list(m.tp_end_offsets.items()):
            ends.add_metric([tp.topic, str(tp.partition)], offset)
        yield ends
