"""Where ``ripple replay`` writes embeddings: JSON lines as published, or Parquet for an offline feature store.

Three sinks behind one interface (:meth:`write` per micro-batch, :meth:`finish` at the end):

* :class:`JsonlSink` — every published record, one JSON object per line, flushed per batch
  (the file runner commits a batch's progress only after that flush);
* :class:`ParquetSink` — the same records as Parquet rows, written in row groups to a
  temporary file that is renamed over ``--out`` when the run ends;
* :class:`LatestSink` (``--latest-only``) — one row per user, the final record of this run,
  as JSON lines or Parquet, written whole when the run ends.

Parquet columns (:data:`PARQUET_SCHEMA`) are what an offline feature store loads as a file
source (docs/feature-store.md): ``user_id`` (string), ``event_ts`` (timestamp, UTC, µs),
``embedding`` (list of float32), ``model_version`` (string), ``state_version`` (int64).
The published vectors are float32 values, so the Parquet vectors equal the JSON ones exactly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from stream_app.core.records import UserEmbedding, json_encoder

Encode = Callable[[UserEmbedding], bytes]
"""How a JSON-lines sink writes a record (``RIPPLE_EMBEDDING_ENCODING``, ``stream_app/core/embedding_format.py``)."""

if TYPE_CHECKING:
    import pyarrow as pa

PARQUET_SUFFIX = ".parquet"
ROW_GROUP_ROWS = 65_536
E_APPEND = (
    "--append cannot be combined with {what}: that file is written whole when the run ends. "
    "Write to a new file instead (or leave --append out)."
)


def is_parquet(path: str) -> bool:
    return path.lower().endswith(PARQUET_SUFFIX)


def parquet_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("event_ts", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("embedding", pa.list_(pa.float32()), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
            pa.field("state_version", pa.int64(), nullable=False),
        ]
    )


def to_table(records: Sequence[UserEmbedding]) -> pa.Table:
    """Records as a table of :func:`parquet_schema` (vectors as float32, ``event_ts`` in µs)."""
    import pyarrow as pa

    dims = np.fromiter((len(r.embedding) for r in records), dtype=np.int32, count=len(records))
    offsets = np.zeros(len(records) + 1, dtype=np.int32)
    np.cumsum(dims, out=offsets[1:])
    values = np.fromiter(
        (x for r in records for x in r.embedding), dtype=np.float32, count=int(offsets[-1]) if len(records) else 0
    )
    micros = np.asarray([round(r.event_ts * 1_000_000) for r in records], dtype=np.int64)
    columns = [
        pa.array([r.user_id for r in records], pa.string()),
        pa.array(micros, pa.timestamp("us", tz="UTC")),
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32())),
        pa.array([r.model_version for r in records], pa.string()),
        pa.array([r.state_version for r in records], pa.int64()),
    ]
    return pa.Table.from_arrays(columns, schema=parquet_schema())


def jsonl_lines(records: Sequence[UserEmbedding], encode: Encode = json_encoder.encode) -> bytes:
    """Records as the JSON lines :class:`JsonlSink` writes (the file runner's forward process makes
    them with this too)."""
    if encode == json_encoder.encode:
        return json_encoder.encode_lines(records)  # one call: the same lines, no join
    return b"".join([encode(emb) + b"\n" for emb in records])


class EmbeddingSink:
    """Where one run's records go; a context manager that :meth:`close` s on exit."""

    lines: bool = False
    """Whether :meth:`write_lines` takes the records as :func:`jsonl_lines` already made them."""

    def write(self, records: Sequence[UserEmbedding]) -> None:
        """Take one micro-batch's records; they are durable (or buffered for :meth:`finish`) on return."""
        raise NotImplementedError

    def write_lines(self, data: bytes) -> None:
        """:meth:`write` for records already encoded by :func:`jsonl_lines` (sinks with :attr:`lines`)."""
        raise TypeError(f"{type(self).__name__} writes records, not lines")

    def finish(self) -> None:
        """The run ended normally: complete the file."""

    def close(self) -> None:
        """Release the file (after :meth:`finish`, or abandoning a failed run's temporary file)."""

    def __enter__(self) -> EmbeddingSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JsonlSink(EmbeddingSink):
    """Every record as a JSON line, flushed per micro-batch (``append``: after what the file holds).

    Another process may append a batch's lines itself (the file runner's forward process,
    ``file_runner.OutputLines``) and report where the file then ends (:meth:`appended`). The
    sink keeps the end of the last batch published: what lies beyond it when this process writes
    again, or closes, is a batch nobody published (a process that died while writing, or batches
    staged ahead of a run that stopped early), and is cut off — the file holds whole lines of
    published batches only, as when every line went through :meth:`write_lines`.
    """

    lines = True

    def __init__(self, path: str, append: bool = False, encode: Encode = json_encoder.encode) -> None:
        self.file: IO[bytes] = open(path, "ab" if append else "wb")
        self.encode = encode
        self.end = self.file.seek(0, os.SEEK_END)
        """Where the last published batch's lines end."""
        self.shared = False
        """Whether another process has appended to the file (it may have written past :attr:`end`)."""

    def write(self, records: Sequence[UserEmbedding]) -> None:
        self.write_lines(jsonl_lines(records, self.encode))

    def write_lines(self, data: bytes) -> None:
        if self.shared:
            self._cut()
        self.file.write(data)
        self.file.flush()
        self.end += len(data)

    def share(self) -> None:
        """Another process may append batches to the file from now on (:meth:`appended`)."""
        self.shared = True

    def appended(self, end: int) -> None:
        """A batch's lines were appended by another process; the file now ends at ``end``."""
        self.shared = True
        self.end = end

    def _cut(self) -> None:
        self.file.seek(self.end)
        self.file.truncate()

    def finish(self) -> None:
        self.file.flush()

    def close(self) -> None:
        if self.shared and not self.file.closed and os.fstat(self.file.fileno()).st_size > self.end:
            self._cut()
        self.file.close()


class ParquetSink(EmbeddingSink):
    """Every record as a Parquet row, row groups of :data:`ROW_GROUP_ROWS`, renamed into place at the end."""

    def __init__(self, path: str) -> None:
        import pyarrow.parquet as pq

        self.path, self.tmp = path, f"{path}.tmp"
        self.writer: Any = pq.ParquetWriter(self.tmp, parquet_schema(), compression="zstd")
        self.pending: list[UserEmbedding] = []

    def write(self, records: Sequence[UserEmbedding]) -> None:
        self.pending.extend(records)
        if len(self.pending) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(to_table(self.pending), row_group_size=ROW_GROUP_ROWS)
            self.pending = []

    def finish(self) -> None:
        self._flush()
        self.writer.close()
        self.writer = None
        os.replace(self.tmp, self.path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            os.unlink(self.tmp)


class LatestSink(EmbeddingSink):
    """The last record of each user (``--latest-only``), written as JSON lines or Parquet at the end.

    Records are kept per user in arrival order, so a user's row is the last one this run
    published: the highest ``state_version`` (the runner never publishes an older one later).
    """

    def __init__(self, path: str, encode: Encode = json_encoder.encode) -> None:
        self.path = path
        self.encode = encode
        self.latest: dict[str, UserEmbedding] = {}

    def write(self, records: Sequence[UserEmbedding]) -> None:
        for emb in records:
            self.latest.pop(emb.user_id, None)  # re-inserted: the file lists users by their last update
            self.latest[emb.user_id] = emb

    def finish(self) -> None:
        tmp = f"{self.path}.tmp"
        records = list(self.latest.values())
        if is_parquet(self.path):
            import pyarrow.parquet as pq

            pq.write_table(to_table(records), tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        else:
            with open(tmp, "wb") as f:
                for emb in records:
                    f.write(self.encode(emb) + b"\n")
        os.replace(tmp, self.path)

    def close(self) -> None:
        self.latest.clear()


def sink_type(path: str, latest_only: bool = False) -> type[EmbeddingSink]:
    """Which sink ``--out path`` gets: Parquet by the ``.parquet`` suffix, one row per user with
    ``--latest-only``, else every record as JSON lines."""
    if latest_only:
        return LatestSink
    if is_parquet(path):
        return ParquetSink
    return JsonlSink


def open_sink(
    path: str, latest_only: bool = False, append: bool = False, encode: Encode = json_encoder.encode
) -> EmbeddingSink:
    """The sink for ``--out path`` (:func:`sink_type`; JSON lines written by ``encode``)."""
    if append and (latest_only or is_parquet(path)):
        raise ValueError(E_APPEND.format(what="--latest-only" if latest_only else "a Parquet --out"))
    kind = sink_type(path, latest_only)
    if kind is LatestSink:
        return LatestSink(path, encode)
    if kind is ParquetSink:
        return ParquetSink(path)
    return JsonlSink(path, append, encode)


def read_parquet(path: str) -> dict[str, dict[str, Any]]:
    """A Parquet export by user (the last row of each user wins): what the tests and examples read back."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    rows = table.to_pylist()
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        row["embedding"] = np.asarray(row["embedding"], dtype=np.float32)
        out[row["user_id"]] = row
    return out
