"""The embedded runner: events from a file through the pipeline, embeddings to a JSONL (or Parquet) file.

Progress is committed per micro-batch: the state of the batch and the file's
next line number go into RocksDB in one atomic write, *after* the batch's
embeddings were flushed to the output. A run that stops anywhere can be
started again with the same arguments and continues where it stopped; at worst
the last batch's embeddings are written twice with the same state_version.

The output file holds what this run published (``stream_app/exports.py``): every record
as JSON lines (default), as Parquet rows (``--out FILE.parquet``), or one final record per
user (``--latest-only``); the last two are written whole, and renamed into place, when the
run ends.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

from tqdm import tqdm

from graph_state import CachedStore, GraphStore, RocksStore
from operators import Checkpoint, Embedder, EncoderConfig, set_threads
from operators.evaluation import graph_config_of
from operators.heads import LabelHead
from stream_app.embedding_format import embedding_encoder
from stream_app.exports import open_sink
from stream_app.metrics import Metrics
from stream_app.pipeline import APPLIED, DUPLICATE, REJECTED, Pipeline
from stream_app.readers import count_lines, read_events
from stream_app.recommend import Recommender
from stream_app.records import RawRecord, json_encoder
from stream_app.settings import Settings

PROGRESS_PREFIX = "file-progress:"


@dataclass
class ReplaySummary:
    """Counts of one run of the file runner."""

    events: int = 0
    skipped_lines: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    unknown_actions: int = 0
    published: int = 0
    users: set[str] = field(default_factory=set)
    seconds: float = 0.0
    model_version: str = ""

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


W_UNTRAINED = (
    "note: no --model / RIPPLE_MODEL_PATH, so the encoder is the seeded, untrained one (random weights: the "
    "vectors carry no learned signal); train one with `ripple train --data EVENTS --out model.ckpt` "
    "(`make demo` shows how) and pass --model model.ckpt."
)
E_GRAPH_MISMATCH = (
    "checkpoint {path} was trained on user graphs built with {trained}, but the settings say {current}; "
    "the published embeddings would not be the vectors the model was trained and evaluated on. "
    "Fix: run with {fix}, or retrain the model with the current settings."
)


def load_checkpoint(settings: Settings) -> Checkpoint:
    """The checkpoint named by the settings, or the seeded default model.

    A trained checkpoint records the graph settings (window, actions, action
    weights, decay) it was trained with; serving it on graphs built differently
    would publish vectors that were never evaluated, so that is refused with the
    settings that fix it.
    """
    if not settings.model_path:
        return Checkpoint.seeded(EncoderConfig(actions=settings.actions), seed=settings.model_seed)
    checkpoint = Checkpoint.load(settings.model_path)
    check_servable(checkpoint, settings)
    return checkpoint


def load_head(settings: Settings, checkpoint: Checkpoint) -> LabelHead | None:
    """The label head named by ``RIPPLE_HEAD_PATH`` (None when unset), refused unless trained on ``checkpoint``."""
    if not settings.head_path:
        return None
    head = LabelHead.load(settings.head_path)
    head.check_encoder(checkpoint, settings.model_path or "the seeded default model", settings.head_path)
    return head


def check_servable(checkpoint: Checkpoint, settings: Settings) -> None:
    """What a loaded checkpoint must satisfy to be served with ``settings`` (startup and live swap)."""
    if checkpoint.training.get("graph"):
        check_graph_settings(checkpoint, settings)
    recommender(settings).check(checkpoint)


def recommender(settings: Settings) -> Recommender:
    """``RIPPLE_RECOMMEND_TOP`` / ``RIPPLE_RECOMMEND_EXCLUDE_SEEN`` for the pipeline."""
    return Recommender(settings.recommend_top, settings.recommend_exclude_seen)


def check_graph_settings(checkpoint: Checkpoint, settings: Settings) -> None:
    trained, current = graph_config_of(checkpoint), settings.graph_config()
    differ = [
        name
        for name in ("max_nodes", "actions", "action_weights", "decay_seconds")
        if _canonical(getattr(trained, name)) != _canonical(getattr(current, name))
    ]
    if not differ:
        return

    def show(config: object) -> str:
        return " ".join(f"RIPPLE_{n.upper()}={_env_value(getattr(config, n))}" for n in differ)

    raise ValueError(
        E_GRAPH_MISMATCH.format(
            path=settings.model_path, trained=show(trained), current=show(current), fix=show(trained)
        )
    )


def _canonical(value: object) -> object:
    if isinstance(value, dict):
        return sorted((str(k), float(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(value, float):
        return round(value, 9)
    return value


def _env_value(value: object) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v:g}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def file_identity(path: str) -> str:
    """Names a file's progress entry: its absolute path plus a digest of its first 64 KiB."""
    h = hashlib.sha256(os.path.abspath(path).encode())
    with open(path, "rb") as f:
        h.update(f.read(65536))
    return h.hexdigest()[:24]


def batched(records: Iterable[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    it = iter(records)
    while chunk := list(islice(it, size)):
        yield chunk


def replay(
    events_path: str,
    fmt: str,
    out_path: str,
    settings: Settings,
    dead_letter_path: str | None = None,
    append: bool = False,
    from_start: bool = False,
    progress: bool | None = None,
    metrics: Metrics | None = None,
    latest_only: bool = False,
) -> ReplaySummary:
    """Run a file through the pipeline; see the module docstring for the commit order."""
    set_threads(settings.torch_threads)
    settings.tune_gc()
    checkpoint = load_checkpoint(settings)
    head = load_head(settings, checkpoint)
    store: GraphStore = RocksStore(settings.state_dir, settings.graph_config(), settings.rocks_options())
    if settings.graph_cache_users > 0:
        store = CachedStore(store, settings.graph_cache_users)
    try:
        embedder = Embedder(checkpoint, settings.incremental_policy())
        pipeline = Pipeline(
            store, embedder, settings.event_limits(), metrics, head, settings.explain_top, recommender(settings)
        )
        progress_key = PROGRESS_PREFIX + file_identity(events_path)
        done = store.get_meta(progress_key)
        start_line = 0 if (from_start or done is None) else int(done)
        summary = ReplaySummary(skipped_lines=start_line, model_version=checkpoint.model_version)
        total = count_lines(events_path, fmt)
        encode = embedding_encoder(settings.embedding_encoding)
        mode = "ab" if append else "wb"
        started = time.perf_counter()
        with (
            open_sink(out_path, latest_only, append, encode) as out,
            open(dead_letter_path, mode) if dead_letter_path else open(os.devnull, "wb") as dlq,
            tqdm(total=total, initial=start_line, unit="ev", disable=None if progress is None else not progress) as bar,
        ):
            for chunk in batched(read_events(events_path, fmt, start_line), settings.batch_size):
                result = pipeline.process(chunk)
                out.write(result.embeddings)
                summary.users.update(emb.user_id for emb in result.embeddings)
                for dead in result.dead_letters:
                    dlq.write(json_encoder.encode(dead) + b"\n")
                dlq.flush()
                pipeline.commit(result, {progress_key: str(chunk[-1].offset + 1).encode()})
                pipeline.observe_published(result)
                summary.events += len(chunk)
                summary.outcomes.update(result.outcomes)
                summary.rejected.update(result.rejected)
                summary.unknown_actions += result.unknown_actions
                summary.published += len(result.embeddings)
                bar.update(chunk[-1].offset + 1 - bar.n)
            out.finish()
        summary.seconds = time.perf_counter() - started
        return summary
    finally:
        store.close()


def summary_rows(summary: ReplaySummary) -> list[tuple[str, str]]:
    rows = [
        ("events read", f"{summary.events:,}"),
        ("applied", f"{summary.outcomes[APPLIED]:,}"),
        ("duplicates ignored", f"{summary.outcomes[DUPLICATE]:,}"),
        ("rejected", f"{summary.outcomes[REJECTED]:,}"),
    ]
    rows += [(f"  rejected: {reason}", f"{n:,}") for reason, n in sorted(summary.rejected.items())]
    rows += [
        ("unknown actions (as 'other')", f"{summary.unknown_actions:,}"),
        ("users updated", f"{len(summary.users):,}"),
        ("embeddings published", f"{summary.published:,}"),
        ("lines skipped (already done)", f"{summary.skipped_lines:,}"),
        ("model version", summary.model_version),
        ("seconds", f"{summary.seconds:.2f}"),
        ("events/s", f"{summary.events_per_second:,.0f}"),
    ]
    return rows
