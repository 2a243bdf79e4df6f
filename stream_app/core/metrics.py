"""Prometheus metrics of the pipeline, on an explicit registry (never the global one in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    """All Ripple metrics. Names follow Prometheus conventions (``_total``, ``_seconds``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "ripple_events_processed_total",
            "Events by outcome (applied, duplicate, rejected).",
            ["outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "ripple_dead_letters_total", "Messages dead-lettered, by reason.", ["reason"], registry=r
        )
        self.unknown_actions = Counter(
            "ripple_unknown_actions_total",
            "Events whose action is outside the vocabulary (treated as 'other').",
            registry=r,
        )
        self.published = Counter("ripple_embeddings_published_total", "User embeddings published.", registry=r)
        self.refetched = Counter(
            "ripple_input_refetched_total",
            "Input messages the consumer skipped after a rebalance, read again and processed.",
            registry=r,
        )
        self.batch_size = Histogram("ripple_batch_size", "Events per micro-batch.", buckets=BATCH_BUCKETS, registry=r)
        self.embed_seconds = Histogram(
            "ripple_embed_seconds",
            "Time of the batched GCN forward per micro-batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "ripple_batch_seconds", "Time to process one micro-batch end to end.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.latency = Histogram(
            "ripple_event_to_publish_seconds",
            "From the event entering Kafka (record timestamp) to its embedding being published.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.users = Gauge("ripple_users_in_state", "Users with a graph in this worker's state.", registry=r)
        self.graph_cache_bytes = Gauge(
            "ripple_graph_cache_bytes",
            "Measured footprint of the decoded user graphs kept in memory (at most RIPPLE_GRAPH_CACHE_MB; "
            "0 when that is 0: not measured).",
            registry=r,
        )
        self.users_deleted = Counter(
            "ripple_users_deleted_total",
            "Users deleted by deletion requests (a tombstone published for each, unknown users included).",
            registry=r,
        )
        self.model_info = Gauge("ripple_model_info", "The serving model (value 1).", ["model_version"], registry=r)
        self.model_reloads = Counter(
            "ripple_model_reloads_total",
            "Changes of the checkpoint file seen by the worker, by outcome (swapped, rejected, unchanged).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("swapped", "rejected", "unchanged"):
            # Present at 0 from the start: increase() then sees the first rejection (RippleModelReloadRejected).
            self.model_reloads.labels(outcome=outcome)
        # Faust/aiokafka export no lag: the worker sets this from the consumer's highwater and position.
        self.consumer_lag = Gauge(
            "ripple_consumer_lag",
            "Input-topic messages not yet consumed (highwater - position), per assigned partition.",
            ["partition"],
            registry=r,
        )

        self.undecodable_batches = Counter(
            "ripple_undecodable_batches_total",
            "Record batches the consumer could not decode (missing codec, corrupt), skipped and dead-lettered.",
            ["reason", "codec"],
            registry=r,
        )
        for reason in ("missing_codec", "corrupt_batch"):
            for codec in ("none", "gzip", "snappy", "lz4", "zstd"):
                # Present at 0 from the start: increase() then sees the first one (RippleUndecodableInput).
                self.undecodable_batches.labels(reason=reason, codec=codec)

    def set_model(self, model_version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(model_version=model_version).set(1)


class FeedMetrics:
    """Metrics of ``ripple feed`` (embeddings topic → Redis), served on its own ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.written = Counter(
            "ripple_feed_written_total", "Embeddings written to the online store (Redis).", registry=r
        )
        self.skipped = Counter(
            "ripple_feed_skipped_stale_total",
            "Embeddings not written because the store holds a newer state_version of the user.",
            registry=r,
        )
        self.deleted = Counter("ripple_feed_deleted_total", "Tombstones applied (the user's key deleted).", registry=r)
        self.invalid = Counter(
            "ripple_feed_invalid_total",
            "Records of the embeddings topic that could not be decoded (skipped).",
            registry=r,
        )
        self.redis_errors = Counter(
            "ripple_feed_redis_errors_total",
            "Failed Redis round trips (the batch is retried; nothing is committed meanwhile).",
            registry=r,
        )
        self.redis_up = Gauge(
            "ripple_feed_redis_up",
            "1 when the last Redis round trip succeeded, 0 while Redis is unreachable.",
            registry=r,
        )
        self.write_seconds = Histogram(
            "ripple_feed_write_seconds",
            "Time of one Redis round trip writing a batch of embeddings.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.publish_to_store = Histogram(
            "ripple_feed_publish_to_store_seconds",
            "From an embedding entering the topic (record timestamp) to it being in Redis.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "ripple_feed_lag",
            "Embeddings on the topic not yet in Redis (end offset - next offset to write), per assigned partition.",
            ["partition"],
            registry=r,
        )
