"""Imports point stream_app → operators → graph_state, each layer keeps to its libraries, and each room of
a layer to its own (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KAFKA_CLIENTS = {"faust", "kafka", "aiokafka", "mode"}
FORBIDDEN = {
    "graph_state": {
        "operators",
        "stream_app",
        "torch",
        "torch_geometric",
        "faust",
        "kafka",
        "aiokafka",
        "prometheus_client",
    },
    "operators": {"stream_app", "faust", "kafka", "aiokafka", "prometheus_client", "mode"},
    "stream_app": set(),
    "bench": {"tests"},
}
ROOMS = {
    # serving (what the runners load) never needs offline work: training, datasets, evaluation, labels
    "operators": ({"operators.offline"}, ["offline"]),
    # core is what every runner shares: no Kafka client, no CLI, no runner
    "stream_app/core": (
        KAFKA_CLIENTS | {"typer", "stream_app.kafka", "stream_app.files", "stream_app.cli"},
        [],
    ),
    # the worker never runs through the file runner (model loading lives in core/serving.py)
    "stream_app/kafka": ({"typer", "stream_app.cli", "stream_app.files.file_runner"}, []),
    "stream_app/files": ({"faust", "aiokafka", "mode", "typer", "stream_app.kafka", "stream_app.cli"}, []),
}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module an import statement names (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


def within(name: str, forbidden: set[str]) -> set[str]:
    return {f for f in forbidden if name == f or name.startswith(f + ".")}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert not {k: v for k, v in offenders.items() if v}


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_each_room_keeps_to_its_imports(room):
    forbidden, skip = ROOMS[room]
    offenders = {}
    for path in sorted((ROOT / room).rglob("*.py")):
        if set(path.relative_to(ROOT / room).parts[:-1]) & set(skip):
            continue
        bad = set().union(*(within(name, forbidden) for name in imported_modules(path)))
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders


def test_only_the_cli_imports_the_cli():
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("graph_state", "operators", "stream_app", "bench")
        for path in sorted((ROOT / package).rglob("*.py"))
        if "cli" not in path.relative_to(ROOT).parts
        and path.name != "__main__.py"
        and any(within(name, {"stream_app.cli"}) for name in imported_modules(path))
    ]
    assert not offenders


def test_cli_command_modules_do_not_import_each_other():
    """Commands share ``typer_app`` only; ``main`` registers them all (no import circle)."""
    commands = {p.stem for p in (ROOT / "stream_app/cli").glob("*_commands.py")}
    offenders = {
        path.name: sorted(n for n in imported_modules(path) if n.rsplit(".", 1)[-1] in commands)
        for path in sorted((ROOT / "stream_app/cli").glob("*.py"))
        if path.name not in ("main.py", "__init__.py")
    }
    assert not {k: v for k, v in offenders.items() if v}
    shared = imported_modules(ROOT / "stream_app/cli/typer_app.py")
    assert not [name for name in shared if name.startswith("stream_app.cli")]
