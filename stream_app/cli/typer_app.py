"""The ``ripple`` Typer app and what its commands share: the console, errors, settings, event formats."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from stream_app.core.settings import Settings

if TYPE_CHECKING:
    from graph_state import UserGraph
    from operators import Checkpoint

app = typer.Typer(help="Ripple: streaming incremental user embeddings.", no_args_is_help=True, add_completion=False)
console = Console(stderr=True)


class EventFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"
    recbole = "recbole"
    diginetica = "diginetica"


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def settings_from(**overrides: object) -> Settings:
    """``Settings.from_env`` for a command: a bad value ends it with the message naming the variable."""
    try:
        return Settings.from_env(**overrides)
    except ValueError as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits


def load_user_graph(state: Path, model: Path | None, user: str) -> tuple[Checkpoint, UserGraph]:
    """The checkpoint and one user's stored graph of an embedded state directory (exits with the cause)."""
    from graph_state import RocksStore
    from stream_app.core.serving import load_checkpoint

    try:
        settings = Settings.from_env(state_dir=str(state), model_path=str(model) if model else None)
        checkpoint = load_checkpoint(settings)
        store = RocksStore(settings.state_dir, settings.graph_config(), settings.rocks_options())
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits
    try:
        graph = store.get_many([user]).get(user)
    finally:
        store.close()
    if graph is None:
        fail(f"no state for user {user!r} in {state}; replay events for this user first or check --state.")
        raise AssertionError("unreachable")  # fail() exits
    return checkpoint, graph


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
