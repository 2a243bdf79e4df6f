"""The Kafka commands of ``ripple``: ``worker`` (the Faust worker), ``produce`` (file → input topic), ``tail``,
and ``forget`` (delete users: a request on the deletion topic, or directly in an embedded state directory)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from stream_app.cli.typer_app import EventFormat, app, console, fail, print_table, settings_from

E_NO_TOPIC_DATA = "no message arrived on {topic!r} within {timeout:g}s."


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
    from stream_app.kafka.produce import produce_events

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

    from stream_app.core.embedding_format import readable
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
        from stream_app.files.forget import forget_local

        settings = settings_from(state_dir=str(state))
        try:
            found = forget_local(users, settings)
        except (ValueError, RuntimeError) as exc:
            fail(str(exc))
            return
        rows = [(user, "deleted" if had else "no state (nothing to delete)") for user, had in found.items()]
        print_table(f"forgotten in {state}", rows)
        return
    from stream_app.kafka.produce import produce_deletions

    settings = settings_from(deletion_topic=topic, broker=broker)
    try:
        sent = produce_deletions(users, settings, reason)
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
        return
    rows = [(d.user_id, f"partition {d.partition}, offset {d.offset}") for d in sent]
    print_table(f"deletion requests → {settings.deletion_topic}", rows)
    console.print("the worker owning each user deletes its state and publishes a tombstone on the embeddings topic.")
