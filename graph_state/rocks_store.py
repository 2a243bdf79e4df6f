r"""The RocksDB backend of :class:`GraphStore`, on rocksdict, with small explicit options.

Keys: ``u\0<user>`` a user's full graph record (``graph_state.codec``), ``t\0<user>`` its tail
(the events applied since that record, ``codec.encode_tail``), ``m\0<name>`` runner metadata,
``s\0<name>`` the store's own (the smallest ``tail_min_nodes`` it was written with).
A large graph's record is written at most every ``RocksOptions.snapshot_every`` of its events;
in between only its tail is, and a read replays the tail onto the record.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial

from rocksdict import BlockBasedOptions, Cache, DBCompressionType, Options, Rdict, WriteBatch, WriteOptions

from graph_state.codec import apply_tail, decode, encode_stored, encode_tail
from graph_state.config import GraphConfig
from graph_state.user_graph import Saved, UserGraph

_USER = b"u\x00"
_TAIL = b"t\x00"
_META = b"m\x00"
_TAIL_FLOOR = b"s\x00tail_min_nodes"
E_LOCKED = (
    "the state directory {path} is in use by another Ripple process (RocksDB lock held); "
    "stop that process or pass a different --state directory."
)
_COMPRESSION = {"none": "none", "snappy": "snappy", "lz4": "lz4", "zstd": "zstd"}
E_COMPRESSION = "unknown RocksDB compression {found!r}: set RIPPLE_ROCKSDB_COMPRESSION to one of {known}."
E_SYNC_WITHOUT_WAL = (
    "RocksDB sync writes fsync the write-ahead log, which is off: "
    "set RIPPLE_ROCKSDB_WAL=true as well, or leave RIPPLE_ROCKSDB_SYNC_WRITES off."
)


@dataclass(frozen=True)
class RocksOptions:
    """RocksDB sizing. The defaults suit a 2-core, few-GiB machine.

    RocksDB's own defaults (and Faust's 2 GiB block cache per partition) are far
    too large when one worker holds many partition databases.
    """

    block_cache_mb: int = 16
    write_buffer_mb: int = 8
    max_write_buffers: int = 2
    max_open_files: int = 256
    wal: bool = False
    """Write RocksDB's write-ahead log. Off by default: the WAL writes every batch a second time
    (at 1,000-node graphs it was 90 % of a batch's write time, ``bench/history_length.py``),
    and what it protects is recomputable. Without it a crash (``kill -9``) loses the batches
    since the last memtable flush, and — because a runner's progress is written in the same
    batches — rolls state and progress back together: a resumed run re-reads those events and
    publishes their embeddings again (at-least-once, as with the WAL). A clean close flushes."""
    sync_writes: bool = False
    """fsync the WAL on every batch (needs ``wal``); off by default (the WAL still survives a process crash)."""
    compression: str = "lz4"
    """Block compression of RocksDB's files: none, snappy, lz4 or zstd. lz4 rather than RocksDB's
    snappy: the background flushes of 1,000-node graphs cost 10 % less CPU per event
    (``bench/history_length.py``, CPU time), and the files stay compressed."""
    persist_cache_every: int = 0
    """Write a graph's per-node layer cache with it only when its state_version is a multiple of this
    (0 = never). The cache is derived data, 3x a large graph's record; it lives in memory (see
    ``CachedStore``) and a graph read back without a current cache is recomputed in full once.
    A stored cache is current only for a graph whose last event landed on such a version, so
    writing it pays off rarely: at 1,000-node graphs every 32 versions cost 1/4 more bytes written
    and doubled the slowest tenth of batches (bench/history_length.py, docs/benchmarks.md)."""

    snapshot_every: int = 32
    """Write a user's full record at most every this many of its events; in between, write only the
    events applied since that record (its *tail*, a few hundred bytes), which a read replays onto
    it. A 1,000-node graph's record is ~90 KB: rewriting it for every event was most of the write
    time and all of RocksDB's flush and compaction work (bench/history_length.py). 0 or 1: always
    the full record."""
    tail_min_nodes: int = 256
    """Graphs with fewer nodes are always written in full: their record is a few KB, cheaper to
    rewrite than to replay on a cold read (10-node graphs with tails: the file runner 3 to 14 %
    slower in four side-by-side runs on 10,000 users, ``bench/throughput.py --dataset generated``)."""

    def build(self) -> Options:
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_write_buffer_size(self.write_buffer_mb << 20)
        opts.set_max_write_buffer_number(self.max_write_buffers)
        opts.set_max_open_files(self.max_open_files)
        if self.compression not in _COMPRESSION:
            raise ValueError(E_COMPRESSION.format(found=self.compression, known=", ".join(_COMPRESSION)))
        opts.set_compression_type(getattr(DBCompressionType, _COMPRESSION[self.compression])())
        table = BlockBasedOptions()
        table.set_block_cache(Cache(self.block_cache_mb << 20))
        table.set_cache_index_and_filter_blocks(True)
        # A user's first event reads a key no file holds: without a filter every such read searches
        # each level's index and a data block (4.6 µs each over 10,000 new users, bench/throughput.py).
        table.set_bloom_filter(10, False)
        opts.set_block_based_table_factory(table)
        return opts


class RocksStore:
    """User graphs in one RocksDB database; batches are written atomically.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     store = RocksStore(d, GraphConfig())
    ...     store.put_many({"u1": UserGraph(GraphConfig())}, meta={"k": b"v"})
    ...     found = sorted(store.get_many(["u1", "u2"])), store.get_meta("k")
    ...     store.close()
    >>> found
    (['u1'], b'v')
    """

    def __init__(self, path: str | os.PathLike[str], config: GraphConfig, options: RocksOptions | None = None) -> None:
        self.config = config
        self.path = os.fspath(path)
        self.options = options or RocksOptions()
        os.makedirs(self.path, exist_ok=True)
        try:
            self._db = Rdict(self.path, options=self.options.build())
        except Exception as exc:  # rocksdict raises a bare Exception
            if "lock" in str(exc).lower():
                raise RuntimeError(E_LOCKED.format(path=self.path)) from exc
            raise
        if self.options.sync_writes and not self.options.wal:
            raise ValueError(E_SYNC_WITHOUT_WAL)
        self._write_opts = WriteOptions()
        self._write_opts.sync = self.options.sync_writes
        # A property at run time; rocksdict's stubs declare a method.
        self._write_opts.disable_wal = not self.options.wal  # type: ignore[method-assign,assignment]
        # Reads look for tails only beside records of at least the smallest ``tail_min_nodes`` this
        # database was ever written with (kept in it), so a later, larger setting misses none.
        stored = self._db.get(_TAIL_FLOOR)
        self._tail_floor = min(self.options.tail_min_nodes, int(stored) if stored is not None else 1 << 62)
        if stored is None or self._tail_floor < int(stored):
            self._db.put(_TAIL_FLOOR, str(self._tail_floor).encode(), self._write_opts)
        self._whole = Saved(self, -1, "", False, None)
        self._tail_min = self.options.tail_min_nodes if self.options.snapshot_every > 1 else 1 << 62
        """Graphs with this many nodes get tails after their full record; smaller ones share ``_whole``."""
        """Shared by every graph this store writes in full only (too small for tails): no object per graph."""

    def get_many(self, user_ids: Iterable[str]) -> dict[str, UserGraph]:
        uids = list(user_ids)
        keys: list[str | int | float | bytes | bool] = [_USER + uid.encode("utf-8") for uid in uids]
        values: list[bytes | None] = self._db.get(keys) or []
        found: dict[str, UserGraph] = {}
        large, floor = [], self._tail_floor
        for uid, raw in zip(uids, values, strict=True):
            if raw is not None:
                graph = found[uid] = decode(raw, self.config)
                self._mark(graph)
                if graph.n_nodes >= floor:  # only records this large can have a tail
                    large.append(uid)
        if large:
            tail_keys: list[str | int | float | bytes | bool] = [_TAIL + uid.encode("utf-8") for uid in large]
            for uid, tail in zip(large, self._db.get(tail_keys) or [], strict=True):
                if tail is not None:
                    if found[uid].saved is self._whole:  # a small graph written when tails began lower
                        found[uid].mark_saved(self, tail=False)
                    apply_tail(found[uid], tail)  # a stale tail (of another record) is left unread
                    found[uid].saved.tail = True  # type: ignore[union-attr]  # marked above
        return found

    def put_many(self, graphs: Mapping[str, UserGraph], meta: Mapping[str, bytes] | None = None) -> None:
        """One atomic batch: per graph its tail when this store holds its full record from fewer
        than ``snapshot_every`` events ago and that record had ``tail_min_nodes``, else its full
        record (and its old tail deleted). A graph object stands for one user."""
        batch, mark = self._encode(graphs, meta)
        self._db.write(batch, self._write_opts)
        mark()

    def prepare_many(
        self, graphs: Mapping[str, UserGraph], meta: Mapping[str, bytes] | None = None
    ) -> Callable[[], None]:
        """:meth:`put_many` in two steps: the graphs encoded (and marked as stored) now, the returned
        call writes them. Between the two the graphs may change (the next batch's events) and no
        other writer may write; a failed write leaves marks this store does not hold, so a caller
        whose write failed discards these graph objects (the pipeline drops its cache)."""
        batch, mark = self._encode(graphs, meta)
        mark()
        return partial(self._db.write, batch, self._write_opts)

    def _encode(
        self, graphs: Mapping[str, UserGraph], meta: Mapping[str, bytes] | None
    ) -> tuple[WriteBatch, Callable[[], None]]:
        """The write batch of :meth:`put_many`, and what marks its graphs as stored once it is written."""
        batch = WriteBatch(raw_mode=True)
        every, snapshot = self.options.persist_cache_every, self.options.snapshot_every
        full, tails = [], []
        for uid, graph in graphs.items():
            key = uid.encode("utf-8")
            saved = graph.saved
            if saved is not None and saved.store is self and saved.unsaved is not None:
                cache_due = every > 0 and graph.state_version % every == 0
                if not saved.unsaved and not cache_due:
                    continue  # unchanged since its record was written (only duplicates, say)
                if len(saved.unsaved) < snapshot and not cache_due:
                    batch.put(_TAIL + key, encode_tail(graph))
                    tails.append(saved)
                    continue
            batch.put(_USER + key, encode_stored(graph, every))
            if saved is not None and saved.tail:
                batch.delete(_TAIL + key)  # only then: a tombstone per write would slow every read
            if saved is not self._whole or graph.n_nodes >= self._tail_min:  # (small and marked: as before)
                full.append(graph)
        for name, value in (meta or {}).items():
            batch.put(_META + name.encode("utf-8"), value)

        def mark() -> None:
            for graph in full:
                self._mark(graph)
            for held in tails:
                held.tail = True

        return batch, mark

    def _mark(self, graph: UserGraph) -> None:
        """Mark ``graph`` as held here in full, keeping its next events when tails will follow."""
        if graph.n_nodes >= self._tail_min:
            graph.mark_saved(self, tail=True)
        else:
            graph.saved = self._whole

    def delete(self, user_id: str) -> bool:
        key = user_id.encode("utf-8")
        existed = self._db.get(_USER + key) is not None
        batch = WriteBatch(raw_mode=True)
        batch.delete(_USER + key)
        batch.delete(_TAIL + key)
        self._db.write(batch, self._write_opts)
        return existed

    def get_meta(self, name: str) -> bytes | None:
        return self._db.get(_META + name.encode("utf-8"))

    def user_ids(self) -> Iterator[str]:
        for key in self._db.keys(from_key=_USER):
            assert isinstance(key, bytes)  # raw mode
            if not key.startswith(_USER):
                break
            yield key[len(_USER) :].decode("utf-8")

    def close(self) -> None:
        self._db.close()
