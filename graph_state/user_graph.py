"""One user's behaviour graph: items as nodes, weighted transitions as edges, stored as columns.

Every per-node field is a numpy column and every edge is a row of three edge columns
(``src``, ``dst``, ``weight``), all growing in place with spare capacity. So building a
batch of many graphs is a concatenation plus an offset, encoding is a header plus
``tobytes()`` of each column, and decoding is ``np.frombuffer`` — while applying one event
still touches a handful of scalars.
"""

from __future__ import annotations

import hashlib
import math
import os
from array import array
from collections.abc import Callable, Container, Sequence
from typing import Any, NamedTuple

import numpy as np

from graph_state.behavior import Behavior, UserBehavior
from graph_state.config import GraphConfig

_NATIVE_API = 9
_native: Any
try:
    if os.environ.get("RIPPLE_PURE_PYTHON"):
        raise ImportError("RIPPLE_PURE_PYTHON is set")
    from graph_state import _native

    if getattr(_native, "API", None) != _NATIVE_API:  # a stale build of older sources (a failed rebuild)
        raise ImportError(f"graph_state._native has API {getattr(_native, 'API', None)}, not {_NATIVE_API}")
except ImportError:
    _native = None
NATIVE = _native is not None
"""Whether :meth:`UserGraph.apply`, :func:`event_key`, :func:`gather` and ``graph_state.codec.encode`` run in C
(``graph_state/_native.c``, built by ``pip install``); without it (no C compiler, or
``RIPPLE_PURE_PYTHON=1``) the same code runs in Python, with the same results bit for bit."""

NODE_COLUMNS: dict[str, np.dtype] = {
    "counts": np.dtype("<i8"),
    "last_seen": np.dtype("<f8"),
    "last_seq": np.dtype("<i8"),
    "last_action": np.dtype("<i8"),
    "action_mask": np.dtype("<u8"),
    "weight_sum": np.dtype("<f8"),
}
"""Name and little-endian dtype of every node column, in the order of the node block's rows.

All are 8 bytes wide: a graph keeps them as the rows of one ``int64`` block (floats and the
mask are views of their rows), so copying, growing, batching and encoding a graph's nodes is
one array operation, not one per column."""
COUNTS, LAST_SEEN, LAST_SEQ, LAST_ACTION, ACTION_MASK, WEIGHT_SUM = range(len(NODE_COLUMNS))
EDGE_COLUMNS: dict[str, np.dtype] = {"src": np.dtype("<i8"), "dst": np.dtype("<i8"), "weight": np.dtype("<f8")}
"""Likewise the rows of the edge block."""
_MIN_CAPACITY = 8
# What :meth:`UserGraph.footprint` counts beyond the arrays' own bytes, fitted to ``tracemalloc``:
# the object and its containers; an item id with its slot lookup; a ring key in the array, and in
# the ring's set once the Python path built one; an edge lookup entry (int key and value); the
# scalar memoryviews of a block the Python path wrote to.
_BYTES_PER_GRAPH = 1100  # 1500 while each block kept float and uint views of itself (~400 bytes)
_BYTES_PER_ITEM = 95
_BYTES_PER_RING_ENTRY = 8
_BYTES_PER_RING_KEY = 90
_BYTES_PER_EDGE_LOOKUP = 100
_BYTES_PER_SCALAR_VIEWS = 850
TAIL_LIMIT = 256
"""Applied events a graph keeps for its store's tail (:attr:`UserGraph.unsaved`) before it stops
keeping them (the store then writes a full record): bounds a graph's memory whatever the store's
``snapshot_every``."""


class Saved:
    """Where and as what a graph's full record was last written: what a store needs to write only
    the events applied since (its *tail*; ``RocksStore``) and to read them back."""

    __slots__ = ("event_id", "store", "tail", "unsaved", "version")

    def __init__(
        self,
        store: object,
        version: int,
        event_id: str,
        tail: bool,
        unsaved: list[tuple[str, str, str, float, float | None]] | None,
    ) -> None:
        self.store = store
        """The store holding the record (``None``: not known)."""
        self.version = version
        """The record's ``state_version`` and ``last_event_id``: a tail names its record by both."""
        self.event_id = event_id
        self.tail = tail
        """The store may also hold a tail of the graph beside the record: when it writes the
        record again it deletes the tail."""
        self.unsaved = unsaved
        """The :class:`Applied` fields of the events applied since the record (``None``: not kept)."""


class Applied(NamedTuple):
    """An applied behaviour as a graph keeps it for its store's tail: what :meth:`UserGraph.apply` reads."""

    event_id: str
    item_id: str
    action: str
    ts: float
    weight: float | None


_UNKNOWN = Saved(None, -1, "", True, None)
"""A decoded graph's: some store holds its record, maybe with a tail (replaced, never changed)."""


def py_event_key(event_id: str) -> int:
    """A stable signed 64-bit digest of an event id, as kept in the dedupe ring: BLAKE2b with an
    8-byte digest of its UTF-8, read as a little-endian signed int (:func:`event_key`).

    >>> py_event_key("e1") == py_event_key("e1"), py_event_key("e1") == py_event_key("e2")
    (True, False)
    """
    digest = hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


event_key: Callable[[str], int] = _native.event_key if _native is not None else py_event_key
""":func:`py_event_key`, in C when the native core is built (0.16 instead of 0.46 µs an id)."""


class GraphChange(NamedTuple):
    """What one applied event changed (a tuple: one is made per event).

    ``nodes`` are slots whose own inputs changed (new item, new count or action,
    or a slot reused after eviction); ``edges`` are (src, dst) slot pairs whose
    weight changed, appeared or disappeared. An empty change means a duplicate.
    """

    nodes: frozenset[int] = frozenset()
    edges: frozenset[tuple[int, int]] = frozenset()
    evicted: str | None = None
    duplicate: bool = False
    late_by: float = 0.0
    """Seconds the refused event lay before the newest applied one (0 = not refused)."""


def _scalars(block: np.ndarray) -> Any:
    """A 2-d memoryview of a C-contiguous block: ``view[row, col]`` reads and writes Python scalars."""
    return memoryview(block)  # type: ignore[arg-type]


def _held(nodes: np.ndarray, edges: np.ndarray) -> int:
    """Bytes two blocks keep alive: their own, or all of the record they view (a decoded graph's)."""
    if nodes.base is None and edges.base is None:  # a written graph's own blocks
        return nodes.nbytes + edges.nbytes
    held, seen = 0, None
    for block in (nodes, edges):
        base = block
        while isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        if not isinstance(base, bytes):
            held += block.nbytes
        elif base is not seen:
            held, seen = held + len(base), base
    return held


def _grown(block: np.ndarray, used: int, size: int) -> np.ndarray:
    """A writable ``int64`` copy of ``block[:, :used]`` with room for at least ``size`` columns (doubling)."""
    capacity = max(_MIN_CAPACITY, block.shape[1])
    while capacity < size:
        capacity *= 2
    out = np.zeros((block.shape[0], capacity), dtype=np.int64)
    out[:, :used] = block[:, :used]
    return out


class UserGraph:
    """The bounded behaviour graph of one user.

    Nodes live in slots; a slot keeps its index until its item is evicted, and the
    freed slot takes the next new item. New edges are appended; an eviction fills the
    holes its edges leave with the last edges. Every
    field is a pure function of the sequence of applied events, so rebuilding a user
    from its events gives the same graph bit for bit.

    Node columns (``counts``, ``last_seen``, ``last_seq``, ``last_action``,
    ``action_mask``, ``weight_sum``) and edge columns (``edge_src``, ``edge_dst``,
    ``edge_weight``) are numpy views of length ``n_nodes`` / ``n_edges``; treat them
    as read-only and change a graph only through :meth:`apply`.

    >>> from types import SimpleNamespace as Ev
    >>> g = UserGraph(GraphConfig(max_nodes=2))
    >>> _ = g.apply(Ev(event_id="1", item_id="a", action="view", ts=0.0, weight=None))
    >>> _ = g.apply(Ev(event_id="2", item_id="b", action="click", ts=10.0, weight=None))
    >>> change = g.apply(Ev(event_id="3", item_id="c", action="view", ts=20.0, weight=None))
    >>> change.evicted, g.items(), g.state_version
    ('a', ['c', 'b'], 3)
    >>> g.apply(Ev(event_id="3", item_id="c", action="view", ts=20.0, weight=None)).duplicate
    True
    """

    # Slots, not an instance dict: a graph is ~230 bytes of attributes in one place instead of a
    # ~1 KB dict beside it, and the native core reads them by offset (member descriptors), not by
    # a dict probe per attribute (perf: dict lookups were the native apply's largest cost).
    __slots__ = (
        "_cache_array",
        "_cache_bytes",
        "_edge_at",
        "_edge_views",
        "_edges",
        "_n",
        "_ne",
        "_node_views",
        "_nodes",
        "_ring_set",
        "_rows",
        "_rows_owner",
        "_slot_of",
        "_stale_rows",
        "_writable",
        "cache_key",
        "config",
        "ids_memo",
        "item_ids",
        "last_event_id",
        "last_slot",
        "last_ts",
        "ring",
        "ring_pos",
        "saved",
        "state_version",
    )

    def __init__(
        self,
        config: GraphConfig,
        *,
        state_version: int = 0,
        last_slot: int = -1,
        last_ts: float = 0.0,
        last_event_id: str = "",
        item_ids: list[str] | None = None,
        nodes: np.ndarray | None = None,
        edges: np.ndarray | None = None,
        ring: Sequence[int] | None = None,
        ring_pos: int = 0,
        cache_key: str = "",
        cache: bytes | np.ndarray = b"",
    ) -> None:
        self.config = config
        self.state_version = state_version
        self.last_slot = last_slot
        self.last_ts = last_ts
        self.last_event_id = last_event_id
        self.item_ids: list[str] = item_ids if item_ids is not None else []
        self._n = len(self.item_ids)
        # The blocks may be read-only views of a stored record: they are copied on the first write.
        fresh = nodes is None and edges is None and not self._n
        if nodes is None:
            nodes = np.zeros((len(NODE_COLUMNS), _MIN_CAPACITY if fresh else 0), dtype=np.int64)
        if edges is None:
            edges = np.zeros((len(EDGE_COLUMNS), _MIN_CAPACITY if fresh else 0), dtype=np.int64)
        self._set_nodes(nodes)
        self._set_edges(edges)
        self._ne = 0 if fresh else self._edges.shape[1]
        if not fresh and self._nodes.shape != (len(NODE_COLUMNS), self._n):
            raise ValueError(f"node block has shape {self._nodes.shape} for {self._n} items")
        if self._edges.shape[0] != len(EDGE_COLUMNS):
            raise ValueError(f"edge block has shape {self._edges.shape}")
        self._writable = fresh
        self._edge_at: dict[int, int] | None = {} if fresh else None
        self._slot_of = {item: slot for slot, item in enumerate(self.item_ids)}
        self.ids_memo: Any = None
        """Owned by ``graph_state.codec``: the item ids as encoded (msgpack), dropped whenever an id
        changes — or, made by the native core's encoder (a ``bytearray``), changed in place by its
        ``apply``: re-encoding every id of a graph was most of writing it (cold strings)."""
        self._rows_owner: object | None = None
        self._rows: array[int] = array("q")
        self._stale_rows: list[int] = []
        self.ring = array("q", ring if ring is not None else ())
        """Digests of the newest event ids (a ring buffer of signed 64-bit ints; ``tobytes`` is the codec's)."""
        self.ring_pos = ring_pos
        size = config.dedupe_ring
        if len(self.ring) > size or (self.ring_pos and len(self.ring) < size):
            # A changed ring size: keep the newest ids, oldest first.
            ordered = self.ring[self.ring_pos :] + self.ring[: self.ring_pos]
            self.ring, self.ring_pos = ordered[-size:], 0
        self._ring_set: set[int] | None = None
        """The ring's keys as a set, for the Python path's lookups (built on its first use: the native
        core scans the ring instead, and 256 int objects in a set are a sixth of a small graph)."""
        self.cache_key = cache_key
        """Identifies what produced ``cache`` (model version and layout); empty when none."""
        self._cache_bytes: bytes = b""
        self._cache_array: np.ndarray | None = None
        self.cache = cache
        self.saved: Saved | None = None if fresh else _UNKNOWN
        """Where this graph's full record was last written (set by stores that write tails, see
        ``RocksStore``); ``None`` for a new graph, which no store holds yet."""

    def _set_nodes(self, block: np.ndarray) -> None:
        self._nodes = block
        self._node_views: tuple[Any, Any] | None = None  # made on the first scalar write (see _nodes_mv)

    def _set_edges(self, block: np.ndarray) -> None:
        self._edges = block
        self._edge_views: tuple[Any, Any] | None = None

    def _nodes_mv(self) -> tuple[Any, Any]:
        """(int, float) 2-d memoryviews of the node block: scalar writes ~2x faster than numpy indexing."""
        if self._node_views is None:
            self._node_views = (_scalars(self._nodes), _scalars(self._nodes.view(np.float64)))
        return self._node_views

    def _edges_mv(self) -> tuple[Any, Any]:
        if self._edge_views is None:
            self._edge_views = (_scalars(self._edges), _scalars(self._edges.view(np.float64)))
        return self._edge_views

    # ---- the per-node layer cache (owned by ``operators``) ------------------------

    @property
    def cache(self) -> bytes:
        """Per-node layer outputs kept for incremental recompute, as bytes (owned by ``operators``)."""
        return self._cache_array.tobytes() if self._cache_array is not None else self._cache_bytes

    @cache.setter
    def cache(self, value: bytes | np.ndarray) -> None:
        if isinstance(value, np.ndarray):
            self._cache_array, self._cache_bytes = value, b""
        else:
            self._cache_array, self._cache_bytes = None, bytes(value)

    def cache_array(self) -> np.ndarray | None:
        """The cache as a float32 array without copying (``None`` when empty)."""
        if self._cache_array is not None:
            return self._cache_array
        if not self._cache_bytes or len(self._cache_bytes) % 4:
            return None
        return np.frombuffer(self._cache_bytes, dtype=np.float32)

    @property
    def has_cache(self) -> bool:
        return self._cache_array is not None or bool(self._cache_bytes)

    # ---- reading -------------------------------------------------------------

    @property
    def n_nodes(self) -> int:
        return self._n

    @property
    def n_edges(self) -> int:
        return self._ne

    def node_block(self) -> np.ndarray:
        """``[len(NODE_COLUMNS), n_nodes]`` int64: every node column as a row (floats as their bits)."""
        return self._nodes[:, : self._n]

    def edge_block(self) -> np.ndarray:
        """``[3, n_edges]`` int64: source, destination and weight (float64 bits) of every edge."""
        return self._edges[:, : self._ne]

    def batch_view(self) -> tuple[np.ndarray, np.ndarray, int, int]:
        """(node block, edge block, state_version, last_slot) in one call: what batching a graph reads."""
        return self._nodes[:, : self._n], self._edges[:, : self._ne], self.state_version, self.last_slot

    @property
    def counts(self) -> np.ndarray:
        return self._nodes[COUNTS, : self._n]

    @property
    def last_seen(self) -> np.ndarray:
        return self._nodes[LAST_SEEN, : self._n].view(np.float64)

    @property
    def last_seq(self) -> np.ndarray:
        return self._nodes[LAST_SEQ, : self._n]

    @property
    def last_action(self) -> np.ndarray:
        return self._nodes[LAST_ACTION, : self._n]

    @property
    def action_mask(self) -> np.ndarray:
        return self._nodes[ACTION_MASK, : self._n].view(np.uint64)

    @property
    def weight_sum(self) -> np.ndarray:
        return self._nodes[WEIGHT_SUM, : self._n].view(np.float64)

    @property
    def edge_src(self) -> np.ndarray:
        return self._edges[0, : self._ne]

    @property
    def edge_dst(self) -> np.ndarray:
        return self._edges[1, : self._ne]

    @property
    def edge_weight(self) -> np.ndarray:
        return self._edges[2, : self._ne].view(np.float64)

    def slot_rows(self, owner: object, lookup: Callable[[str], int]) -> array[int]:
        """``lookup(item_id)`` of every slot, memoised for ``owner`` and refreshed only for changed slots.

        ``operators`` keeps the item index's embedding rows here, so a batch does not look up
        every item of every graph again; a graph holds the memo of one owner at a time. A signed
        64-bit ``array``: ``np.frombuffer`` reads it without a copy.
        """
        if self._rows_owner is not owner:
            self._rows = array("q", [lookup(item) for item in self.item_ids])
            self._rows_owner, self._stale_rows = owner, []
        elif self._stale_rows:
            for slot in self._stale_rows:
                self._rows[slot] = lookup(self.item_ids[slot])
            self._stale_rows = []
        return self._rows

    def items(self) -> list[str]:
        return list(self.item_ids)

    def footprint(self) -> int:
        """:meth:`py_footprint`, in C when the native core is built (a graph cache measures every graph
        it is handed, each batch)."""
        if _native is not None:
            size: int | None = _native.footprint(self)
            if size is not None:
                return size
        return self.py_footprint()

    def py_footprint(self) -> int:
        """About how many bytes this graph holds in memory: its blocks (capacity included; a decoded
        graph's views hold its whole record), layer cache, item ids and their lookup, dedupe ring,
        edge lookup once built. What a graph cache budgets by; within 0.85-1.25x of ``tracemalloc``
        from 3 to 1,000 nodes, decoded or written, by either path
        (``tests/unit/graph_state/test_graph_cache.py``)."""
        cache = self._cache_array.nbytes if self._cache_array is not None else len(self._cache_bytes)
        lookup = 0 if self._edge_at is None else _BYTES_PER_EDGE_LOOKUP * len(self._edge_at)
        ring = _BYTES_PER_RING_ENTRY + (0 if self._ring_set is None else _BYTES_PER_RING_KEY)
        views = (self._node_views is not None) + (self._edge_views is not None)
        return (
            _BYTES_PER_GRAPH
            + _held(self._nodes, self._edges)
            + cache
            + lookup
            + _BYTES_PER_ITEM * self._n
            + ring * len(self.ring)
            + _BYTES_PER_SCALAR_VIEWS * views
        )

    def slot_of(self, item_id: str) -> int | None:
        return self._slot_of.get(item_id)

    def edges(self) -> list[tuple[int, int, float]]:
        """All directed edges as (src, dst, weight), in the graph's edge order.

        New edges are appended and an eviction moves the last edges into the holes, so the
        order is a function of the applied events; it survives the codec, so
        tensors built from a stored graph sum messages in the same order as ones
        built from the live graph.
        """
        return list(zip(self.edge_src.tolist(), self.edge_dst.tolist(), self.edge_weight.tolist(), strict=True))

    def in_neighbors(self, slot: int) -> set[int]:
        return set(self.edge_src[self.edge_dst == slot].tolist())

    def recency(self) -> list[int]:
        """How many events ago each node was last seen (0 = the latest behaviour)."""
        return (self.state_version - self.last_seq).tolist()

    def seen(self, event_id: str) -> bool:
        return event_key(event_id) in self._ring_keys()

    # ---- writing -------------------------------------------------------------

    def apply(self, event: Behavior, *, replay: bool = False) -> GraphChange:
        """Apply one behaviour; return what changed (``duplicate`` if already applied).

        ``replay``: the event was applied to this graph's history before (a store's tail, see
        :meth:`replay`): it is not refused as late, whatever ``max_lateness_s`` is now.

        The native core applies it in C (after :meth:`_reserve`; ml-100k's stream alone 6.2 -> 2.6 µs
        an event); anything it does not expect, and every event without the core, takes :meth:`_apply`."""
        if _native is not None:
            change: GraphChange | None = _native.apply(self, event, replay)
            if change is not None:
                return change
        return self._apply(event, replay)

    def _apply(self, event: Behavior, replay: bool) -> GraphChange:
        """:meth:`apply` in Python: the reference that ``graph_state/_native.c`` matches bit for bit."""
        key = event_key(event.event_id)
        if key in self._ring_keys():
            return GraphChange(duplicate=True)
        cfg = self.config
        ts = float(event.ts)
        if self.state_version and ts < self.last_ts - cfg.max_lateness_s and not replay:
            return GraphChange(late_by=self.last_ts - ts)
        if not self._writable:
            self._own()
        action = cfg.action_index(event.action)
        weight = cfg.action_weight(action) * (1.0 if event.weight is None else float(event.weight))
        nodes: set[int] = set()
        edges: set[tuple[int, int]] = set()
        evicted: str | None = None

        slot = self._slot_of.get(event.item_id)
        if slot is None:
            if self._n < cfg.max_nodes:
                slot = self._new_slot(event.item_id)
            else:
                # The methods, not ``np.argmin``/``np.flatnonzero``: their Python wrappers cost
                # ~0.6 µs each, a sixth of an eviction.
                slot = int(self._nodes[LAST_SEQ, : self._n].argmin())
                evicted = self.item_ids[slot]
                self._evict(slot, nodes, edges)
                self._reset_slot(slot, event.item_id)
        nodes.add(slot)
        block, floats = self._nodes_mv()
        block[COUNTS, slot] += 1
        floats[LAST_SEEN, slot] = ts
        block[LAST_SEQ, slot] = self.state_version + 1
        block[LAST_ACTION, slot] = action
        block[ACTION_MASK, slot] |= 1 << action
        floats[WEIGHT_SUM, slot] += weight

        prev = self.last_slot
        if prev >= 0 and prev != slot:
            gap = max(0.0, ts - self.last_ts)
            self._add_edge_weight(prev, slot, weight * math.exp(-gap / cfg.decay_seconds))
            edges.add((prev, slot))
            nodes.add(prev)

        self.last_slot = slot
        self.last_ts = ts
        self.last_event_id = event.event_id
        self.state_version += 1
        self._remember(key)
        saved = self.saved
        if saved is not None and saved.unsaved is not None:
            if len(saved.unsaved) < TAIL_LIMIT:
                saved.unsaved.append((event.event_id, event.item_id, event.action, ts, event.weight))
            else:
                saved.unsaved = None
        return GraphChange(frozenset(nodes), frozenset(edges), evicted)

    def mark_saved(self, store: object, tail: bool) -> None:
        """``store`` now holds this graph's full record as it is; ``tail``: keep the events applied
        from here on (:attr:`unsaved`), for a store that writes them instead of the next records."""
        self.saved = Saved(store, self.state_version, self.last_event_id, False, [] if tail else None)

    @property
    def unsaved(self) -> list[tuple[str, str, str, float, float | None]] | None:
        """The :class:`Applied` fields of every event applied since :meth:`mark_saved` asked for them
        (``None``: not asked, or more than ``TAIL_LIMIT``)."""
        return None if self.saved is None else self.saved.unsaved

    def replay(self, events: Sequence[Applied]) -> None:
        """Apply events this graph's history applied before (a store's tail); raises ``ValueError``
        when one of them is already in the graph (the tail does not continue this record)."""
        for event in events:
            if self.apply(event, replay=True).duplicate:
                raise ValueError(f"the tail's event {event.event_id!r} is already applied to the record")

    def _own(self) -> None:
        """Make both blocks writable arrays of our own (decoded blocks view the record's bytes)."""
        self._set_nodes(_grown(self._nodes, self._n, self._n))
        self._set_edges(_grown(self._edges, self._ne, self._ne))
        self._writable = True

    def _add_edge_weight(self, src: int, dst: int, weight: float) -> None:
        at = self._edge_lookup()
        key = (src << 32) | dst
        found = at.get(key)
        if found is not None:
            self._edges_mv()[1][2, found] += weight
            return
        ne = self._ne
        if ne == self._edges.shape[1]:
            self._set_edges(_grown(self._edges, ne, ne + 1))
        edges, floats = self._edges_mv()
        edges[0, ne] = src
        edges[1, ne] = dst
        floats[2, ne] = weight
        at[key] = ne
        self._ne = ne + 1

    def _new_slot(self, item_id: str) -> int:
        slot = self._n
        if slot == self._nodes.shape[1]:
            self._set_nodes(_grown(self._nodes, slot, slot + 1))
        self._nodes[:, slot] = 0
        self.item_ids.append(item_id)
        self.ids_memo = None
        self._n = slot + 1
        self._slot_of[item_id] = slot
        if self._rows_owner is not None:
            self._rows.append(-1)
            self._stale_rows.append(slot)
        return slot

    def _evict(self, slot: int, nodes: set[int], edges: set[tuple[int, int]]) -> None:
        """Remove the slot's edges: each hole takes the current last edge (an order that is still a
        function of the applied events), so the edge lookup changes only for the moved edges."""
        ne = self._ne
        block = self._edges
        gone = ((block[0, :ne] == slot) | (block[1, :ne] == slot)).nonzero()[0].tolist()
        if gone:
            at = self._edge_at
            mv = self._edges_mv()[0]  # Python scalars in and out: ~5x cheaper than numpy item access
            for pos in reversed(gone):  # highest first: a hole is never filled from another hole
                s, d = mv[0, pos], mv[1, pos]
                edges.add((s, d))
                nodes.add(d if s == slot else s)
                last = ne - 1
                if at is not None:
                    del at[(s << 32) | d]
                if pos != last:
                    s2, d2 = mv[0, last], mv[1, last]
                    mv[0, pos], mv[1, pos], mv[2, pos] = s2, d2, mv[2, last]  # the weight as its bits
                    if at is not None:
                        at[(s2 << 32) | d2] = pos
                ne = last
            self._ne = ne
        if self.last_slot == slot:
            self.last_slot = -1
        del self._slot_of[self.item_ids[slot]]

    def _reset_slot(self, slot: int, item_id: str) -> None:
        self.item_ids[slot] = item_id
        self.ids_memo = None
        self._nodes[:, slot] = 0
        self._slot_of[item_id] = slot
        if self._rows_owner is not None:
            self._rows[slot] = -1
            self._stale_rows.append(slot)

    def _remember(self, key: int) -> None:
        size = self.config.dedupe_ring
        keys = self._ring_keys()
        if len(self.ring) < size:
            self.ring.append(key)
        else:
            keys.discard(self.ring[self.ring_pos])
            self.ring[self.ring_pos] = key
            self.ring_pos = (self.ring_pos + 1) % size
        keys.add(key)

    def _ring_keys(self) -> set[int]:
        if self._ring_set is None:
            self._ring_set = set(self.ring)
        return self._ring_set

    def _reserve(self, nodes: int, edges: int) -> None:
        """Blocks of this graph's own with room for ``nodes`` nodes and ``edges`` edges, and its edge
        lookup: what the native ``apply`` asks for before it writes (the Python path makes each on
        its way; capacities are not part of the record)."""
        if not self._writable:
            self._own()
        if nodes > self._nodes.shape[1]:
            self._set_nodes(_grown(self._nodes, self._n, nodes))
        if edges > self._edges.shape[1]:
            self._set_edges(_grown(self._edges, self._ne, edges))
        self._edge_lookup()

    def _edge_lookup(self) -> dict[int, int]:
        """Each edge's position by its key ``src << 32 | dst`` (built on the first write)."""
        at = self._edge_at
        if at is None:
            keys = (self._edges[0, : self._ne] << 32) | self._edges[1, : self._ne]
            at = self._edge_at = dict(zip(keys.tolist(), range(self._ne), strict=True))
        return at


class Gathered(NamedTuple):
    """Many graphs' columns as one batch, graph after graph (:func:`gather`); all ``int64``."""

    nodes: np.ndarray
    """``[len(NODE_COLUMNS), N]``: every node column (floats and the mask as their bits)."""
    edges: np.ndarray
    """``[3, E]``: sources and destinations offset by their graph's first node, weights as bits."""
    sizes: np.ndarray
    """``[B]``: nodes per graph."""
    n_edges: np.ndarray
    versions: np.ndarray
    """``[B]``: each graph's ``state_version``."""
    last: np.ndarray
    """``[B]``: each graph's ``last_slot`` (within the graph)."""
    rows: np.ndarray
    """``[N]``: ``lookup(item)`` of every node, through each graph's memo (:meth:`UserGraph.slot_rows`)."""


def gather(
    graphs: Sequence[UserGraph],
    owner: object,
    lookup: Callable[[str], int],
    known: dict[str, int] | None = None,
    hashed: tuple[int, int, int] | None = None,
) -> Gathered:
    """The columns a batch of ``graphs`` is built from, in one pass (in C when the native core is
    built: ~0.5 instead of ~3 µs a graph; :func:`py_gather` otherwise, the same arrays).

    ``known``: rows ``lookup`` has resolved before (item id -> row; ``ItemIndex.resolved``): the
    native core reads a graph's new items' rows there and calls ``lookup`` only for the others.
    ``hashed``: ``(base, buckets, limit)`` when ``lookup`` rows every item ``known`` lacks as
    ``base + BLAKE2b-64(item) % buckets`` and remembers it there while ``known`` holds at most
    ``limit`` items (``ItemIndex.hashed_rows``): the native core then does that itself, no call."""
    if _native is not None and type(graphs) is list:
        columns = _native.gather(graphs, owner, lookup, known if type(known) is dict else None, hashed)
        if columns is not None:
            nodes, edges, sizes, n_edges, versions, last, rows = (np.frombuffer(c, dtype=np.int64) for c in columns)
            return Gathered(
                nodes.reshape(len(NODE_COLUMNS), -1),
                edges.reshape(len(EDGE_COLUMNS), -1),
                sizes,
                n_edges,
                versions,
                last,
                rows,
            )
    return py_gather(graphs, owner, lookup)


def py_gather(graphs: Sequence[UserGraph], owner: object, lookup: Callable[[str], int]) -> Gathered:
    """:func:`gather` in Python: one numpy concatenation per block."""
    views = [g.batch_view() for g in graphs]
    node_blocks, edge_blocks, version_list, last_list = zip(*views, strict=True) if views else ((), (), (), ())
    count = len(graphs)
    sizes = np.fromiter((b.shape[1] for b in node_blocks), dtype=np.int64, count=count)
    n_edges = np.fromiter((b.shape[1] for b in edge_blocks), dtype=np.int64, count=count)
    nodes = np.concatenate(node_blocks, axis=1) if count else np.zeros((len(NODE_COLUMNS), 0), dtype=np.int64)
    edges = np.concatenate(edge_blocks, axis=1) if count else np.zeros((len(EDGE_COLUMNS), 0), dtype=np.int64)
    first = np.zeros(count, dtype=np.int64)
    np.cumsum(sizes[:-1], out=first[1:])
    edges[:2] += np.repeat(first, n_edges)
    # One join of the memos' bytes: per graph only the memo lookup (an array per graph cost ~0.7 µs each).
    rows = np.frombuffer(b"".join([g.slot_rows(owner, lookup) for g in graphs]), dtype=np.int64).copy()
    return Gathered(
        nodes,
        edges,
        sizes,
        n_edges,
        np.fromiter(version_list, dtype=np.int64, count=count),
        np.fromiter(last_list, dtype=np.int64, count=count),
        rows,
    )


class AppliedEvents(NamedTuple):
    """Counts of :func:`apply_events`; ``late`` are the refused events' positions and how late each was."""

    applied: int
    duplicates: int
    unknown_actions: int
    new_graphs: int
    late: list[tuple[int, float]]


class UserDelta(NamedTuple):
    """What a batch changed in one user's graph (:func:`apply_events`; a tuple: one per user per batch):
    the incremental engine (``operators``) refreshes a layer cache of ``base_version`` from it."""

    base_version: int
    """``state_version`` of the graph before the batch's events: the version a cache must belong to."""
    slots: frozenset[int]
    """Changed slots (nodes and endpoints of changed edges)."""


def py_apply_events(
    pairs: Sequence[tuple[Any, UserBehavior]],
    graphs: dict[str, UserGraph],
    factory: Callable[[], UserGraph],
    known: Container[str],
    publish: dict[str, UserGraph],
    applied: dict[str, UserGraph],
    restore: dict[str, UserGraph],
    changed: dict[str, UserDelta],
    earliest: dict[str, float],
) -> AppliedEvents:
    """A micro-batch's events applied in order to their users' graphs (:data:`apply_events` runs it
    in one C call where the native core is built; this is the reference it matches). ``pairs`` are
    (record, event): a record with a ``timestamp`` sets ``earliest``. Per user, into the given
    dicts, in first-seen order:
    ``graphs`` (a new user gets ``factory()``), ``changed`` (a :class:`UserDelta`: the slots its
    applied and duplicate events changed, and the version the graph had before them), ``applied``
    (users with an applied event), ``restore`` (users whose duplicate is their latest applied event:
    a redelivery) and ``publish`` (either)."""
    n_applied = n_duplicate = n_unknown = n_new = 0
    late: list[tuple[int, float]] = []
    for i, (record, event) in enumerate(pairs):
        uid = event.user_id
        graph = graphs.get(uid)
        if graph is None:
            graph = graphs[uid] = factory()
            n_new += 1
        before = changed.get(uid)
        base = graph.state_version if before is None else before.base_version
        change = graph.apply(event)
        if change.late_by:
            late.append((i, change.late_by))
            continue
        changed[uid] = UserDelta(base, change.nodes if before is None else before.slots | change.nodes)
        if change.duplicate:
            n_duplicate += 1
            if event.event_id == graph.last_event_id:
                publish[uid] = graph
                restore[uid] = graph
            continue
        n_applied += 1
        if event.action not in known:
            n_unknown += 1
        applied[uid] = graph
        publish[uid] = graph
        ts = record.timestamp
        if ts is not None:
            first = earliest.get(uid)
            if first is None or ts < first:
                earliest[uid] = ts
    return AppliedEvents(n_applied, n_duplicate, n_unknown, n_new, late)


apply_events = py_apply_events
""":func:`py_apply_events`, in C when the native core is built (it prefetches the graphs of the next
events, which a batch finds out of every cache)."""
if _native is not None:
    apply_events = _native.apply_events
    _native.setup(
        GraphChange,
        TAIL_LIMIT,
        AppliedEvents,
        (
            _BYTES_PER_GRAPH,
            _BYTES_PER_ITEM,
            _BYTES_PER_RING_ENTRY,
            _BYTES_PER_RING_KEY,
            _BYTES_PER_EDGE_LOOKUP,
            _BYTES_PER_SCALAR_VIEWS,
        ),
        UserDelta,
    )
