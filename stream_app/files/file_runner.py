"""The embedded runner: events from a file through the pipeline, embeddings to a JSONL (or Parquet) file.

Progress is committed per micro-batch: the state of the batch and the file's
next line number go into RocksDB in one atomic write, *after* the batch's
embeddings were flushed to the output. A run that stops anywhere can be
started again with the same arguments and continues where it stopped; at worst
the last batch's embeddings are written twice with the same state_version.

Where two CPUs or more are usable (``RIPPLE_FORWARD_PROCESS``), the batched GCN forward runs in a
second process (:class:`operators.ForwardProcess`, which also makes JSON-lines output) and batches
overlap: batches k+1 and k+2 are decoded, applied and their state encoded while the process computes
batch k's vectors; then batch k is published and only then its state written — the same order per
batch, so the same resume.

The output file holds what this run published (``stream_app/files/exports.py``): every record
as JSON lines (default), as Parquet rows (``--out FILE.parquet``), or one final record per
user (``--latest-only``); the last two are written whole, and renamed into place, when the
run ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import IO, NamedTuple, cast

import numpy as np
from tqdm import tqdm

from graph_state import RocksStore
from operators import ForwardProcess, set_threads
from operators.forward_process import usable_cpus
from stream_app.core.embedding_format import JSON, embedding_encoder
from stream_app.core.metrics import Metrics
from stream_app.core.pipeline import APPLIED, DUPLICATE, REJECTED, BatchResult, OutputRecords, Published, Staged
from stream_app.core.records import RawRecord, json_encoder
from stream_app.core.serving import ServedModel, build_pipeline, load_model
from stream_app.core.settings import Settings
from stream_app.files.exports import EmbeddingSink, JsonlSink, jsonl_lines, open_sink, sink_type
from stream_app.files.readers import count_lines, read_events

PROGRESS_PREFIX = "file-progress:"
STAGED_AHEAD = 2
"""Batches staged ahead of the one being finished, with a forward process (1 waited on the process
for its slower batches: 0.25 s per 100,000 generated events, docs/benchmarks.md)."""


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


@dataclass
class FileOutput:
    """The file runner's :class:`~stream_app.core.pipeline.Sink`: embeddings to the export, dead letters to JSONL."""

    embeddings: EmbeddingSink
    dead_letters: IO[bytes]

    def publish(self, result: BatchResult) -> None:
        if isinstance(result.encoded, Appended):
            cast(JsonlSink, self.embeddings).appended(result.encoded.end)
        elif isinstance(result.encoded, bytes):
            self.embeddings.write_lines(result.encoded)
        else:
            self.embeddings.write(result.embeddings)
        for dead in result.dead_letters:
            self.dead_letters.write(json_encoder.encode(dead) + b"\n")
        self.dead_letters.flush()


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
    model = load_model(settings)  # refused before the state directory is opened
    total = count_lines(events_path, fmt)
    # Started before anything opens files or threads (it forks): the child needs only the model.
    forward = forward_process(settings, model, total, out_path if sink_type(out_path, latest_only).lines else None)
    store = None
    try:
        store = RocksStore(settings.state_dir, settings.graph_config(), settings.rocks_options())
        pipeline = build_pipeline(settings, store, metrics, model=model)
        progress_key = PROGRESS_PREFIX + file_identity(events_path)
        done = store.get_meta(progress_key)
        start_line = 0 if (from_start or done is None) else int(done)
        summary = ReplaySummary(skipped_lines=start_line, model_version=pipeline.embedder.model_version)
        encode = embedding_encoder(settings.embedding_encoding)
        mode = "ab" if append else "wb"
        started = time.perf_counter()
        with (
            open_sink(out_path, latest_only, append, encode) as out,
            open(dead_letter_path, mode) if dead_letter_path else open(os.devnull, "wb") as dlq,
            tqdm(total=total, initial=start_line, unit="ev", disable=None if progress is None else not progress) as bar,
            contextlib.closing(forward) if forward is not None else contextlib.nullcontext(),
        ):  # the forward process ends (it may append lines) before the output closes
            output = FileOutput(out, dlq)
            if forward is not None and forward.post is not None:  # it makes, and appends, the lines
                cast(JsonlSink, out).share()  # from its first batch: what it leaves unpublished is cut off

            def count(result: BatchResult, chunk: list[RawRecord]) -> None:
                published = result.published_users
                summary.users.update(published)
                summary.events += len(chunk)
                summary.outcomes.update(result.outcomes)
                summary.rejected.update(result.rejected)
                summary.unknown_actions += result.unknown_actions
                summary.published += len(published)
                bar.update(chunk[-1].offset + 1 - bar.n)

            # With a forward process, batches k+1 and k+2 are staged (decoded, applied, their forwards
            # handed over) before batch k is finished (its vectors collected, published, its state written):
            # two batches in the process absorb its slower ones.
            staged: deque[tuple[Staged, list[RawRecord]]] = deque()
            for chunk in batched(read_events(events_path, fmt, start_line), settings.batch_size):
                meta = {progress_key: str(chunk[-1].offset + 1).encode()}
                if forward is None:
                    count(pipeline.run(chunk, output, meta), chunk)
                    continue
                staged.append((pipeline.stage(chunk, meta, forward, [s for s, _ in staged]), chunk))
                if len(staged) > STAGED_AHEAD:
                    done, done_chunk = staged.popleft()
                    count(pipeline.finish(done, output), done_chunk)
            while staged:
                done, done_chunk = staged.popleft()
                count(pipeline.finish(done, output), done_chunk)
            out.finish()
        summary.seconds = time.perf_counter() - started
        return summary
    finally:
        if forward is not None:
            forward.close()
        if store is not None:
            store.close()


def forward_process(
    settings: Settings, model: ServedModel, lines: int, out_path: str | None = None
) -> ForwardProcess | None:
    """The file runner's forward process, when ``RIPPLE_FORWARD_PROCESS`` asks for one (``auto``: 2+
    usable CPUs and 8+ micro-batches in the file) and the run's output lets batches overlap.
    ``out_path``: the JSON-lines output of every record, which the process then makes and appends
    itself (:class:`OutputLines`)."""
    wanted = settings.forward_process
    if wanted == "off" or settings.explain_top > 0 or settings.recommend_top > 0:
        return None
    if wanted == "auto" and (usable_cpus() < 2 or lines < 8 * settings.batch_size):
        return None
    post = None
    if out_path is not None:
        post = OutputLines(OutputRecords(model.checkpoint, model.head), settings.embedding_encoding, out_path)
    return ForwardProcess(model.checkpoint, settings.torch_threads, post)


class Appended(NamedTuple):
    """A batch's JSON lines appended to the output by the forward process: the file then ends at ``end``."""

    end: int


class OutputLines:
    """The forward process's ``post``: a batch's vectors and published states → its JSON lines, as
    :class:`~stream_app.files.exports.JsonlSink` would write them (formatting them is as much work as
    the forward of a batch of small graphs: it is done on the process's core, not the runner's).

    With ``path``, the forward process appends them to that file itself and answers where it then
    ends (:class:`Appended`): the runner's core neither receives nor writes the batch's ~350 KB
    (0.1 s of its CPU per 100,000 generated events, docs/benchmarks.md item 59). Batches are
    answered, so appended, in order, and the runner publishes a batch (and then writes its state)
    once its answer came: the order publish → write per batch holds. Lines of batches the runner
    never published (it stopped early, or the process died mid-write) are cut off by
    :class:`~stream_app.files.exports.JsonlSink` after the process ended. In the runner's own process
    (no forward process, or it died) the lines go back to the sink as bytes, as before.
    """

    def __init__(self, output: OutputRecords, encoding: str, path: str | None = None) -> None:
        self.output, self.encoding, self.path = output, encoding, path
        self.runner = os.getpid()
        self._fd: int | None = None

    def __call__(self, vectors: np.ndarray, published: Published) -> bytes | Appended:
        data = self.output.json_lines(published, vectors) if self.encoding == JSON else None
        if data is None:
            data = jsonl_lines(self.output.make(published, vectors), embedding_encoder(self.encoding))
        if self.path is None or os.getpid() == self.runner:
            return data
        if os.getppid() != self.runner:
            raise RuntimeError("the runner is gone: its batches are not published")
        if self._fd is None:  # opened here, after the runner created (or truncated) the file
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        return Appended(os.lseek(self._fd, 0, os.SEEK_CUR))


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
