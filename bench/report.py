"""Shared by the benchmark scripts: medians, a printed table, and a section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "benchmarks.md")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    return f"{min(values):,.0f} to {max(values):,.0f}" if len(values) > 1 else "-"


def show(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    table = Table(*header, title=title)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def this_command() -> str:
    """The command line that runs this script, as a user would type it."""
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def record(section: str, title: str, body: str, command: str = "", stamp: str = "") -> None:
    """Replace (or append) the section between its markers in docs/benchmarks.md.

    ``command`` and ``stamp`` default to this run's; a table re-rendered from an earlier run's
    results passes that run's."""
    command = command or this_command()
    stamp = stamp or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = (
        f"<!-- bench:{section}:start -->\n### {title}\n\n"
        f"Command: `{command}`  \nRun: {stamp} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}\n\n{body}\n<!-- bench:{section}:end -->"
    )
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    text = open(DOC).read() if os.path.exists(DOC) else "# Benchmarks\n"
    start, end = f"<!-- bench:{section}:start -->", f"<!-- bench:{section}:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(DOC, "w") as f:
        f.write(text)
