"""The ``ripple`` command line: thin Typer commands over the runners (``ripple --help``)."""

from stream_app.cli.main import app, main

__all__ = ["app", "main"]
