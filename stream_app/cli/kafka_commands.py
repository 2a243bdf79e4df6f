"""The Kafka commands of ``ripple``: ``worker`` (the Faust worker), ``produce`` (file → input topic), ``tail``,
and ``forget`` (delete users: a request on the deletion topic, or directly in an embedded state directory)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer
from tqdm import tqdm

from stream_app.cli.typer_app import EventFormat, app, console, fail, print_table, settings_from
from stream_app.core.settings import Settings

E_NO_TOPIC_DATA = "no message arrived on {topic!r} within {timeout:g}s."
E_NOT_EMBEDDED_STATE = (
    "{path} is not a state directory of `ripple replay` (no RocksDB there){hint}; pass the --state of the replay "
    "whose users to delete, or leave --state out to send the request to the worker's deletion topic."
)
E_WORKER_STATE = ": it looks like a Faust worker's state, which only the worker itself may change"


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


def forget_local(user_ids: list[str], settings: Settings) -> dict[str, bool]:
    """Delete users from an embedded (``ripple replay``) state directory; user → whether it had state."""
    from graph_state import RocksStore

    path = settings.state_dir
    if not os.path.isfile(os.path.join(path, "CURRENT")):
        worker_like = os.path.isdir(path) and any(
            os.path.isdir(os.path.join(path, name, "v1", "tables")) for name in os.listdir(path)
        )
        raise ValueError(E_NOT_EMBEDDED_STATE.format(path=path, hint=E_WORKER_STATE if worker_like else ""))
    store = RocksStore(path, settings.graph_config(), settings.rocks_options())
    try:
        return {user: store.delete(user) for user in user_ids}
    finally:
        store.close()


def readable(value: bytes) -> bytes:
    """An embedding record with its vector as JSON numbers; anything else unchanged."""
    from stream_app.core.embedding_format import as_json

    try:
        return as_json(value)
    except (ValueError, TypeError):  # msgspec's errors are ValueErrors: not an embedding record
        return value


@app.command()
def worker(
    broker: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers (kafka://host:port).")] = None,
    app_id: Annotated[Optional[str], typer.Option(help="Faust app id = consumer group.")] = None,
    state: Annotated[Optional[Path], typer.Option(help="RocksDB state directory.")] = None,
    model: Annotated[
        Optional[Path],
        typer.Option(help="Model checkpoint (default: seeded model); replacing the file swaps it in live."),
    ] = None,
    partitions: Annotated[Optional[int], typer.Option(help="Partitions of the input topic and table.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Most events per micro-batch.")] = None,
    web_host: Annotated[Optional[str], typer.Option(help="Address of the web server.")] = None,
    web_port: Annotated[Optional[int], typer.Option(help="Port of the web server.")] = None,
) -> None:
    """Run the streaming worker: input topic → embeddings topic, until Ctrl-C / SIGTERM.

    All other settings come from RIPPLE_* variables (`ripple settings`).
    """
    from stream_app.kafka.compression import check_producer_codec
    from stream_app.kafka.kafka_connection import ensure_topics

    settings = settings_from(
        broker=broker,
        app_id=app_id,
        state_dir=str(state) if state else None,
        model_path=str(model) if model else None,
        partitions=partitions,
        batch_size=batch_size,
        web_host=web_host,
        web_port=web_port,
    )
    try:
        check_producer_codec(settings, "aiokafka")
        ensure_topics(settings)
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
    from stream_app.core.serving import W_UNTRAINED
    from stream_app.kafka.faust_app import run_worker  # torch and Faust load only once the broker answered

    if not settings.model_path:
        console.print(W_UNTRAINED, soft_wrap=True, markup=False)
    instance = settings.group_instance_id()
    console.print(
        f"worker [bold]{settings.app_id}[/]: {settings.input_topic} → {settings.output_topic} "
        f"(dead letters: {settings.dead_letter_topic}), web on http://{settings.web_host}:{settings.web_port}, "
        + (f"static member {instance}" if instance else "dynamic member")
    )
    run_worker(settings)


@app.command()
def produce(
    events: Annotated[Path, typer.Option(help="Event file to send, in file order.", exists=True, dir_okay=False)],
    format: Annotated[EventFormat, typer.Option("--format", help="Format of --events.")] = EventFormat.jsonl,
    rate: Annotated[Optional[float], typer.Option(help="Messages per second (default: as fast as possible).")] = None,
    topic: Annotated[Optional[str], typer.Option(help="Input topic (default RIPPLE_INPUT_TOPIC).")] = None,
    broker: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers.")] = None,
) -> None:
    """Replay an event file into the input topic (key = user_id), with a progress bar."""
    settings = settings_from(input_topic=topic, broker=broker)
    try:
        summary = produce_events(str(events), format.value, settings, rate=rate)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        fail(str(exc))
        return
    rows = [
        ("messages", f"{summary.messages:,}"),
        ("without key (no user_id)", f"{summary.keyless:,}"),
        ("partitions used", ", ".join(f"{p}: {n:,}" for p, n in sorted(summary.partitions.items()))),
        ("seconds", f"{summary.seconds:.2f}"),
    ]
    print_table(f"produced {events.name} → {settings.input_topic}", rows)


@app.command()
def tail(
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest message instead of new ones.")] = False,
    max: Annotated[Optional[int], typer.Option("--max", help="Stop after this many messages.")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Stop after this many seconds without a message.")] = None,
    dead_letters: Annotated[bool, typer.Option(help="Tail the dead-letter topic instead.")] = False,
    topic: Annotated[Optional[str], typer.Option(help="Topic to read (default: the embeddings topic).")] = None,
    broker: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers.")] = None,
    decode: Annotated[
        bool, typer.Option(help="Print compact (f32) embeddings with the vector as JSON numbers.")
    ] = False,
) -> None:
    """Print embeddings (or dead letters) from the output topic, one JSON object per line, as sent.

    Embeddings are printed in the worker's RIPPLE_EMBEDDING_ENCODING; --decode turns compact ones
    into numbers (the `json` encoding of the same record).
    """
    from kafka import KafkaConsumer
    from kafka.errors import NoBrokersAvailable

    from stream_app.kafka.kafka_connection import E_NO_BROKER, client_config

    settings = settings_from(broker=broker)
    name = topic or (settings.dead_letter_topic if dead_letters else settings.output_topic)
    config = client_config(settings)
    try:
        consumer = KafkaConsumer(
            name,
            **config,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            consumer_timeout_ms=int(timeout * 1000) if timeout else float("inf"),
        )
    except NoBrokersAvailable as exc:
        fail(E_NO_BROKER.format(servers=config["bootstrap_servers"], cause=exc))
        return
    seen = 0
    try:
        for message in consumer:
            value = message.value
            if decode and value is not None and not dead_letters:
                value = readable(value)
            sys.stdout.write(("null" if value is None else value.decode("utf-8", errors="replace")) + "\n")
            sys.stdout.flush()
            seen += 1
            if max is not None and seen >= max:
                break
    finally:
        consumer.close()
    if seen == 0 and timeout:
        console.print(E_NO_TOPIC_DATA.format(topic=name, timeout=timeout))


@app.command()
def forget(
    users: Annotated[list[str], typer.Argument(help="user_id(s) to delete.", show_default=False)],
    state: Annotated[
        Optional[Path],
        typer.Option(help="Delete directly from this `ripple replay` state directory instead of via Kafka."),
    ] = None,
    reason: Annotated[Optional[str], typer.Option(help="Why (kept in the request's value, for audits).")] = None,
    topic: Annotated[Optional[str], typer.Option(help="Deletion topic (default RIPPLE_DELETION_TOPIC).")] = None,
    broker: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers.")] = None,
) -> None:
    """Delete users' state (right to be forgotten).

    Without --state: one request per user on the deletion topic; the worker owning the user
    deletes the graph from its table and changelog and publishes a tombstone on the embeddings
    topic. With --state: delete from an embedded state directory now (stop `ripple replay` first).
    """
    if state is not None:
        settings = settings_from(state_dir=str(state))
        try:
            found = forget_local(users, settings)
        except (ValueError, RuntimeError) as exc:
            fail(str(exc))
            return
        rows = [(user, "deleted" if had else "no state (nothing to delete)") for user, had in found.items()]
        print_table(f"forgotten in {state}", rows)
        return
    settings = settings_from(deletion_topic=topic, broker=broker)
    try:
        sent = produce_deletions(users, settings, reason)
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
        return
    rows = [(d.user_id, f"partition {d.partition}, offset {d.offset}") for d in sent]
    print_table(f"deletion requests → {settings.deletion_topic}", rows)
    console.print("the worker owning each user deletes its state and publishes a tombstone on the embeddings topic.")
