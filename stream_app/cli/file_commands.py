"""The embedded commands of ``ripple``: ``replay`` (an event file through the pipeline), ``generate``,
``settings`` and ``explain``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from stream_app.cli.typer_app import EventFormat, app, console, fail, load_user_graph, print_table
from stream_app.core.settings import Settings


@app.command()
def replay(
    events: Annotated[Path, typer.Option(help="Event file to read, in file order.", exists=True, dir_okay=False)],
    out: Annotated[
        Path, typer.Option(help="Output: JSONL of published UserEmbedding records, or Parquet if it ends in .parquet.")
    ],
    state: Annotated[Path, typer.Option(help="RocksDB state directory; reuse it to resume.")] = Path("./ripple-state"),
    format: Annotated[EventFormat, typer.Option("--format", help="Format of --events.")] = EventFormat.jsonl,
    model: Annotated[Optional[Path], typer.Option(help="Model checkpoint (default: seeded model).")] = None,
    dead_letter: Annotated[Optional[Path], typer.Option(help="JSONL file for rejected messages.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Events per micro-batch.")] = None,
    max_nodes: Annotated[Optional[int], typer.Option(help="Distinct items kept per user.")] = None,
    append: Annotated[bool, typer.Option(help="Append to --out/--dead-letter instead of truncating.")] = False,
    from_start: Annotated[bool, typer.Option(help="Ignore the saved progress for this file.")] = False,
    latest_only: Annotated[
        bool, typer.Option(help="Write one row per user (the final record of this run) instead of every version.")
    ] = False,
) -> None:
    """Run an event file through the pipeline without Kafka (the embedded default)."""
    from stream_app.core.serving import W_UNTRAINED
    from stream_app.files.file_runner import replay as run_replay
    from stream_app.files.file_runner import summary_rows

    try:
        settings = Settings.from_env(
            state_dir=str(state),
            model_path=str(model) if model else None,
            batch_size=batch_size,
            max_nodes=max_nodes,
        )
        if not settings.model_path:
            console.print(W_UNTRAINED, soft_wrap=True, markup=False)
        summary = run_replay(
            str(events),
            format.value,
            str(out),
            settings,
            dead_letter_path=str(dead_letter) if dead_letter else None,
            append=append,
            from_start=from_start,
            latest_only=latest_only,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))
        return
    print_table(f"replay of {events.name}", summary_rows(summary))
    console.print(f"embeddings: [bold]{out}[/]" + (f"   dead letters: [bold]{dead_letter}[/]" if dead_letter else ""))


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="JSONL file to write.")],
    users: Annotated[int, typer.Option(min=1)] = 200,
    items: Annotated[int, typer.Option(min=2)] = 500,
    events: Annotated[int, typer.Option(min=1)] = 10_000,
    seed: Annotated[int, typer.Option()] = 0,
    malformed: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of invalid lines.")] = 0.0,
) -> None:
    """Write synthetic events with planted interests and item transitions."""
    from stream_app.files.generate import GeneratorSpec, write_events

    n = write_events(GeneratorSpec(users=users, items=items, events=events, seed=seed, malformed=malformed), str(out))
    console.print(f"wrote {n:,} events to [bold]{out}[/]")


@app.command("settings")
def show_settings() -> None:
    """List every RIPPLE_* environment variable with its default."""
    table = Table("variable", "default", "meaning")
    for row in Settings.documentation():
        table.add_row(*row)
    Console().print(table)


@app.command()
def explain(
    user: Annotated[str, typer.Option(help="The user_id to explain.")],
    state: Annotated[Path, typer.Option(help="RocksDB state directory of the embedded runner.")] = Path(
        "./ripple-state"
    ),
    model: Annotated[Optional[Path], typer.Option(help="Model checkpoint (default: seeded model).")] = None,
    top: Annotated[int, typer.Option(min=1, help="Behaviours to show.")] = 10,
) -> None:
    """Show which behaviours make a user's current embedding (additive shares of the vector)."""
    from operators.explain import explain as explain_graph

    checkpoint, graph = load_user_graph(state, model, user)
    table = Table("item", "action", "share", "attention", "events ago", "count", title=f"user {user}")
    for part in explain_graph(checkpoint, graph, top):
        table.add_row(
            part.item_id,
            part.action,
            f"{part.share:+.3f}",
            f"{part.attention:+.3f}",
            str(part.events_ago),
            str(part.count),
        )
    Console().print(table)
    console.print(f"state_version {graph.state_version}, {graph.n_nodes} nodes, model {checkpoint.model_version}")
