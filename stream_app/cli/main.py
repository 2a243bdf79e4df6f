"""``ripple``: the Typer app with every command registered, and the entry point."""

from __future__ import annotations

import sys

from stream_app.cli import (
    file_commands,
    head_commands,
    kafka_commands,
    mix_commands,
    serve_commands,
    train_commands,
)
from stream_app.cli.typer_app import app

COMMANDS = (file_commands, head_commands, kafka_commands, mix_commands, serve_commands, train_commands)
"""The modules whose ``@app.command()`` functions make up ``ripple`` (imported for that)."""

__all__ = ["COMMANDS", "app", "main"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
