"""A `ripple feed` subprocess, synthetic embedding records, the online store's content: tests and benches."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from bench.worker_process import WorkerProcess, free_port
from stream_app.core.records import UserEmbedding, json_encoder
from stream_app.kafka.feed import OnlineStore


def feed_env(broker: str, redis_url: str, name: str, topic: str, **extra: object) -> dict[str, str]:
    """RIPPLE_* variables of one isolated feed: its topic, group, Redis and metrics port."""
    env = {
        "RIPPLE_BROKER": f"kafka://{broker}",
        "RIPPLE_OUTPUT_TOPIC": topic,
        "RIPPLE_INPUT_TOPIC": f"events-{name}",
        "RIPPLE_DEAD_LETTER_TOPIC": f"dlq-{name}",
        "RIPPLE_DELETION_TOPIC": f"deletions-{name}",
        "RIPPLE_PARTITIONS": "4",
        "RIPPLE_FEED_GROUP": f"feed-{name}",
        "RIPPLE_REDIS_URL": redis_url,
        "RIPPLE_REDIS_KEY_PREFIX": f"{name}:",
        "RIPPLE_REDIS_TIMEOUT_S": "2",
        "RIPPLE_FEED_RETRY_MAX_S": "1",
        "RIPPLE_FEED_WEB_PORT": str(free_port()),
        "RIPPLE_SESSION_TIMEOUT_S": "6",
        "RIPPLE_LOG_LEVEL": "info",
    }
    env.update({f"RIPPLE_{k.upper()}": str(v) for k, v in extra.items()})
    return env


@dataclass
class FeedProcess(WorkerProcess):
    """One `python -m stream_app feed` subprocess (``wait_healthy``, ``get``, ``stop`` as for a worker)."""

    command: ClassVar[str] = "feed"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['RIPPLE_FEED_WEB_PORT']}"

    def metric(self, name: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        status, body = self.get("/metrics")
        assert status == 200, (status, self.log())
        return sum(s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples if s.name == name)


def create_topic(broker: str, topic: str, partitions: int = 4) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def record(user: str, version: int, seed: int, dim: int = 8, model: str = "m1") -> UserEmbedding:
    rng = np.random.default_rng(seed)
    return UserEmbedding(
        user_id=user,
        embedding=rng.standard_normal(dim).astype(np.float32).tolist(),
        model_version=model,
        state_version=version,
        last_event_id=f"{user}-e{version}",
        event_ts=1_767_225_600.0 + version,
        computed_at=1_767_225_600.5 + version,
        n_nodes=min(version, 50),
    )


def produce(broker: str, topic: str, messages: list[tuple[str, UserEmbedding | None]]) -> dict[int, int]:
    """Send ``(user_id, record or None = tombstone)`` keyed by user, in order; returns each partition's end offset."""
    producer = KafkaProducer(bootstrap_servers=broker, acks="all", linger_ms=5, enable_idempotence=True)
    try:
        futures = [
            producer.send(topic, key=user.encode(), value=None if emb is None else json_encoder.encode(emb))
            for user, emb in messages
        ]
        producer.flush(300)  # a loaded 2-core machine can take a while for 100,000 records
        ends: dict[int, int] = {}
        for f in futures:
            meta = f.get(60)
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        return ends
    finally:
        producer.close(10)


def store_content(store: OnlineStore) -> dict[str, dict]:
    """Every user in the store under its prefix: ``{user_id: StoredEmbedding.to_dict()}``."""
    users = [key.decode()[len(store.prefix) :] for key in store.client.scan_iter(match=store.prefix + "*", count=1000)]
    return {uid: entry.to_dict() for uid, entry in store.get_many(users).items()}


def committed_offsets(broker: str, group: str, topic: str, partitions: int = 4) -> dict[int, int]:
    """The group's committed offset per partition (0 where none)."""
    admin = KafkaAdminClient(bootstrap_servers=broker)
    try:
        offsets = admin.list_consumer_group_offsets(group)
    finally:
        admin.close()
    out = {p: 0 for p in range(partitions)}
    for tp, meta in offsets.items():
        if tp.topic == topic:
            out[tp.partition] = meta.offset
    return out


def wait_committed(
    broker: str, group: str, topic: str, ends: dict[int, int], timeout: float, feed: FeedProcess
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = committed_offsets(broker, group, topic)
        if all(got.get(p, 0) >= end for p, end in ends.items()):
            return
        assert feed.proc is not None and feed.proc.poll() is None, feed.log()
        if time.monotonic() > deadline:
            raise AssertionError(f"feed did not commit {ends} within {timeout}s (at {got}):\n{feed.log()}")
        time.sleep(0.3)


def health(feed: FeedProcess) -> tuple[int, dict]:
    status, body = feed.get("/healthz")
    return status, json.loads(body) if body else {}
