"""Sending to Ripple's topics from outside the worker: an event file to the input topic, deletion requests."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

from tqdm import tqdm

from stream_app.core.settings import Settings


@dataclass
class ProduceSummary:
    """What ``produce`` sent."""

    messages: int = 0
    keyless: int = 0
    seconds: float = 0.0
    partitions: Counter[int] = field(default_factory=Counter)


def produce_events(
    events_path: str,
    fmt: str,
    settings: Settings,
    rate: float | None = None,
    progress: bool | None = None,
) -> ProduceSummary:
    """Send every event of a file to the input topic, keyed by ``user_id``, in file order.

    Lines without a readable ``user_id`` are sent unchanged without a key, so the
    worker dead-letters them exactly as the file runner would. ``rate`` caps the
    messages per second (``None``: as fast as the broker takes them).
    """
    from kafka import KafkaProducer

    from stream_app.core.keys import message_key
    from stream_app.files.readers import count_lines, read_events
    from stream_app.kafka.compression import check_producer_codec, compression_type
    from stream_app.kafka.kafka_connection import client_config, ensure_topics

    check_producer_codec(settings, "kafka-python")
    ensure_topics(settings)
    # Idempotence keeps each partition in send order even when a batch is retried (per-user order is the contract).
    producer = KafkaProducer(
        **client_config(settings),
        linger_ms=5,
        acks="all",
        enable_idempotence=True,
        max_request_size=16 << 20,
        compression_type=compression_type(settings),
    )
    summary = ProduceSummary()
    started = time.perf_counter()
    futures = []
    try:
        total = count_lines(events_path, fmt)
        with tqdm(total=total, unit="ev", disable=None if progress is None else not progress) as bar:
            for record in read_events(events_path, fmt):
                key = message_key(record.value)
                summary.keyless += key is None
                futures.append(producer.send(settings.input_topic, key=key, value=record.value))
                summary.messages += 1
                bar.update(1)
                if rate:
                    ahead = started + summary.messages / rate - time.perf_counter()
                    if ahead > 0:
                        time.sleep(ahead)
                if len(futures) >= 10_000:
                    summary.partitions.update(f.get(timeout=60).partition for f in futures)
                    futures.clear()
            producer.flush()
            summary.partitions.update(f.get(timeout=60).partition for f in futures)
    finally:
        producer.close(timeout=10)
    summary.seconds = time.perf_counter() - started
    return summary


@dataclass(frozen=True)
class DeletionSent:
    """One deletion request on the deletion topic."""

    user_id: str
    partition: int
    offset: int


def produce_deletions(user_ids: list[str], settings: Settings, reason: str | None = None) -> list[DeletionSent]:
    """Send one deletion request per user to the deletion topic (key = ``user_id``) and wait for the broker.

    The value is informative only (the worker reads the key): ``{"user_id", "reason", "requested_at"}``.
    Creates Ripple's topics where missing and checks that the deletion topic is co-partitioned
    with the input topic, like ``ripple produce``.
    """
    from kafka import KafkaProducer

    from stream_app.kafka.compression import check_producer_codec, compression_type
    from stream_app.kafka.kafka_connection import client_config, ensure_topics

    check_producer_codec(settings, "kafka-python")
    ensure_topics(settings)
    producer = KafkaProducer(
        **client_config(settings), acks="all", enable_idempotence=True, compression_type=compression_type(settings)
    )
    try:
        futures = []
        for user in user_ids:
            value = json.dumps({"user_id": user, "reason": reason, "requested_at": time.time()}).encode()
            futures.append((user, producer.send(settings.deletion_topic, key=user.encode("utf-8"), value=value)))
        producer.flush()
        sent = []
        for user, future in futures:
            meta = future.get(timeout=60)
            sent.append(DeletionSent(user, meta.partition, meta.offset))
        return sent
    finally:
        producer.close(timeout=10)
