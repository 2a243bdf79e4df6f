"""One run of a checkpoint through both runners: the file runner's final embeddings, then the worker's
on the real broker over the same events (what tests of a model's stored parts compare)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.worker_process import TopicReader, WorkerProcess, reached, worker_env
from stream_app.core.records import UserEmbedding
from stream_app.core.settings import Settings
from stream_app.files.file_runner import replay
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.files.histories import read_histories
from stream_app.kafka.produce import produce_events
from tests.conftest import read_latest, write_jsonl

SPEC = GeneratorSpec(users=30, items=60, events=900, seed=9, successors=2, follow=0.8)


def generated(tmp_path: Path) -> tuple[str, dict, list[str]]:
    """Events with item transitions written to ``tmp_path``, their histories per user and their sorted items."""
    events_path = write_jsonl(tmp_path / "events.jsonl", list(generate_events(SPEC)))
    histories, _ = read_histories(events_path, "jsonl", Settings.from_env({}))
    vocab = sorted({ev.item_id for events in histories.values() for ev in events})
    return events_path, histories, vocab


@dataclass
class BothRunners:
    expected: dict[str, UserEmbedding]
    """The file runner's last embedding per user."""
    published: list[UserEmbedding]
    """Everything the worker published."""
    file_settings: Settings
    views: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    """The worker's answers to ``get`` paths, asked once every user's final embedding was out."""


def run_both(
    broker: str, unique: str, tmp_path: Path, events_path: str, model: Path, get: tuple[str, ...] = (), **extra: object
) -> BothRunners:
    """``events_path`` through ``ripple replay`` and through one worker, both serving ``model`` with ``extra``."""
    file_settings = Settings.from_env(
        {},
        state_dir=str(tmp_path / "file-state"),
        model_path=str(model),
        **extra,  # type: ignore[arg-type]
    )
    replay(events_path, "jsonl", str(tmp_path / "file.out"), file_settings, progress=False)
    expected = read_latest(tmp_path / "file.out")
    env = worker_env(broker, unique, tmp_path / "state", model_path=model, **extra)
    settings = Settings.from_env(env)
    produce_events(events_path, "jsonl", settings, progress=False)
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    out = TopicReader(broker, settings.output_topic)
    views = {}
    try:
        worker.wait_healthy()
        out.until(reached(expected), timeout=90, what="every user's final embedding")
        views = {path: worker.get(path) for path in get}
    finally:
        out.close()
        code = worker.stop()
    assert code == 0, worker.log()
    return BothRunners(expected, out.embeddings(), file_settings, views)
