"""The serving commands of ``ripple``: ``feed`` (embeddings topic → Redis), ``lookup`` (read it back) and
``recommend`` (top items for a user of an embedded state directory)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from stream_app.cli.typer_app import app, console, fail, load_user_graph, settings_from


@app.command()
def feed(
    broker: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers (kafka://host:port).")] = None,
    redis_url: Annotated[Optional[str], typer.Option(help="Redis to write to (RIPPLE_REDIS_URL).")] = None,
    group: Annotated[Optional[str], typer.Option(help="Consumer group (RIPPLE_FEED_GROUP).")] = None,
    topic: Annotated[Optional[str], typer.Option(help="Embeddings topic (default RIPPLE_OUTPUT_TOPIC).")] = None,
    web_port: Annotated[
        Optional[int], typer.Option(help="Port of /metrics and /healthz (RIPPLE_FEED_WEB_PORT).")
    ] = None,
    from_beginning: Annotated[
        bool, typer.Option(help="Read every partition from its oldest record, ignoring the group's offsets (rebuild).")
    ] = False,
) -> None:
    """Keep the latest embedding of every user in Redis, from the embeddings topic, until Ctrl-C / SIGTERM.

    Writes are ordered by state_version (an older record never overwrites a newer one),
    tombstones delete the user's key, and offsets are committed only once Redis has the
    records. Run several with the same group to share the partitions.
    """
    from stream_app.kafka.feed import redact, run_feed
    from stream_app.kafka.kafka_connection import ensure_topics

    settings = settings_from(
        broker=broker, redis_url=redis_url, feed_group=group, output_topic=topic, feed_web_port=web_port
    )
    try:
        ensure_topics(settings)
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
    console.print(
        f"feed [bold]{settings.feed_group}[/]: {settings.output_topic} → {redact(settings.redis_url)} "
        f"(keys {settings.redis_key_prefix}<user_id>), metrics on "
        f"http://{settings.web_host}:{settings.feed_web_port}/metrics",
        markup=True,
        highlight=False,
    )
    run_feed(settings, from_beginning=from_beginning)


@app.command()
def lookup(
    users: Annotated[list[str], typer.Argument(help="user_id(s) to read.", show_default=False)],
    redis_url: Annotated[Optional[str], typer.Option(help="Redis the feed writes to (RIPPLE_REDIS_URL).")] = None,
) -> None:
    """Print users' latest embeddings from the online store (what `ripple feed` wrote), one JSON object per line."""
    import redis

    from stream_app.kafka.feed import OnlineStore, redact

    settings = settings_from(redis_url=redis_url)
    store = OnlineStore.from_settings(settings)
    try:
        found = store.get_many(users)
    except redis.RedisError as exc:
        fail(f"cannot read Redis at {redact(settings.redis_url)} ({exc}); is it running? (RIPPLE_REDIS_URL)")
        return
    finally:
        store.close()
    for user in users:
        entry = found.get(user)
        sys.stdout.write(
            json.dumps(entry.to_dict() if entry else {"user_id": user, "error": "not in the store"}) + "\n"
        )
    if len(found) < len(users):
        raise typer.Exit(1)


@app.command()
def recommend(
    user: Annotated[str, typer.Argument(help="The user_id to recommend for.", show_default=False)],
    state: Annotated[Path, typer.Option(help="RocksDB state directory of `ripple replay`.")] = Path("./ripple-state"),
    model: Annotated[Optional[Path], typer.Option(help="The trained checkpoint the state was replayed with.")] = None,
    k: Annotated[int, typer.Option("--k", min=1, max=1000, help="How many items.")] = 20,
    exclude_seen: Annotated[bool, typer.Option(help="Leave out the items of the user's window.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (as the worker's view answers).")] = False,
) -> None:
    """Top-K items for a user's current vector, ranked as `ripple evaluate` ranks them (user · item, plus a kNN mix)."""
    from operators import Embedder
    from stream_app.core.recommend import Recommender, recommendations_of

    checkpoint, graph = load_user_graph(state, model, user)
    vectors = Embedder(checkpoint).embed_many([graph])
    try:
        (body,) = recommendations_of(Recommender(), checkpoint, vectors, [user], [graph], k, exclude_seen)
    except ValueError as exc:
        fail(str(exc))
        return
    if json_out:
        sys.stdout.write(json.dumps(body) + "\n")
        return
    table = Table("rank", "item", "score", title=f"user {user}: top {k}" + (" (seen excluded)" if exclude_seen else ""))
    for rank, item in enumerate(body["items"], 1):
        table.add_row(str(rank), item["item_id"], f"{item['score']:.4f}")
    Console().print(table)
    console.print(f"state_version {graph.state_version}, model {checkpoint.model_version}")
