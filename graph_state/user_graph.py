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
from dataclasses import dataclass

import numpy as np

from graph_state.behavior import Behavior
from graph_state.config import GraphConfig

NODE_COLUMNS: dict[str, np.dtype] = {
    "counts": np.dtype("<i8"),
    "last_seen": np.dtype("<f8"),
    "last_seq": np.dtype("<i8"),
    "last_action": np.dtype("<i1"),
    "action_mask": np.dtype("<u8"),
    "weight_sum": np.dtype("<f8"),
}
"""Name and little-endian dtype of every node column (the codec writes them in this order)."""
EDGE_COLUMNS: dict[str, np.dtype] = {"src": np.dtype("<i4"), "dst": np.dtype("<i4"), "weight": np.dtype("<f8")}
_MIN_CAPACITY = 8


def event_key(event_id: str) -> int:
    """A stable signed 64-bit digest of an event id, as kept in the dedupe ring.

    >>> event_key("e1") == event_key("e1"), event_key("e1") == event_key("e2")
    (True, False)
    """
    digest = hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


@dataclass(frozen=True)
class GraphChange:
    """What one applied event changed.

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


def _grown(column: np.ndarray, size: int) -> np.ndarray:
    """A writable copy of ``column`` with room for at least ``size`` rows (doubling)."""
    capacity = max(_MIN_CAPACITY, len(column))
    while capacity < size:
        capacity *= 2
    out = np.zeros(capacity, dtype=column.dtype)
    out[: len(column)] = column
    return out


class UserGraph:
    """The bounded behaviour graph of one user.

    Nodes live in slots; a slot keeps its index until its item is evicted, and the
    freed slot takes the next new item. Edges are kept in the order they first
    appeared (an eviction removes its edges and keeps the order of the rest). Every
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

    def __init__(
        self,
        config: GraphConfig,
        *,
        state_version: int = 0,
        last_slot: int = -1,
        last_ts: float = 0.0,
        last_event_id: str = "",
        item_ids: list[str] | None = None,
        columns: dict[str, np.ndarray] | None = None,
        edges: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        ring: list[int] | None = None,
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
        n = len(self.item_ids)
        self._n = n
        # Columns may be read-only views of a stored record: they are copied on the first write.
        self._cols: dict[str, np.ndarray] = {}
        for name, dtype in NODE_COLUMNS.items():
            col = columns[name] if columns is not None else np.zeros(0, dtype)
            if len(col) != n:
                raise ValueError(f"node column {name} has {len(col)} rows for {n} items")
            self._cols[name] = col
        if edges is None:
            edges = tuple(np.zeros(0, dtype) for dtype in EDGE_COLUMNS.values())  # type: ignore[assignment]
        assert edges is not None
        self._src, self._dst, self._w = edges
        self._ne = len(self._src)
        if not (len(self._dst) == len(self._w) == self._ne):
            raise ValueError("edge columns differ in length")
        self._writable = False
        self._slot_of = {item: slot for slot, item in enumerate(self.item_ids)}
        self.ring = list(ring) if ring is not None else []
        self.ring_pos = ring_pos
        size = config.dedupe_ring
        if len(self.ring) > size or (self.ring_pos and len(self.ring) < size):
            # A changed ring size: keep the newest ids, oldest first.
            ordered = self.ring[self.ring_pos :] + self.ring[: self.ring_pos]
            self.ring, self.ring_pos = ordered[-size:], 0
        self._ring_set = set(self.ring)
        self.cache_key = cache_key
        """Identifies what produced ``cache`` (model version and layout); empty when none."""
        self._cache_bytes: bytes = b""
        self._cache_array: np.ndarray | None = None
        self.cache = cache

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

    def column(self, name: str) -> np.ndarray:
        """A node column (see :data:`NODE_COLUMNS`) as a view of length ``n_nodes``."""
        return self._cols[name][: self._n]

    counts = property(lambda self: self.column("counts"))
    last_seen = property(lambda self: self.column("last_seen"))
    last_seq = property(lambda self: self.column("last_seq"))
    last_action = property(lambda self: self.column("last_action"))
    action_mask = property(lambda self: self.column("action_mask"))
    weight_sum = property(lambda self: self.column("weight_sum"))

    @property
    def edge_src(self) -> np.ndarray:
        return self._src[: self._ne]

    @property
    def edge_dst(self) -> np.ndarray:
        return self._dst[: self._ne]

    @property
    def edge_weight(self) -> np.ndarray:
        return self._w[: self._ne]

    def items(self) -> list[str]:
        return list(self.item_ids)

    def slot_of(self, item_id: str) -> int | None:
        return self._slot_of.get(item_id)

    def edges(self) -> list[tuple[int, int, float]]:
        """All directed edges as (src, dst, weight), in the order they appeared.

        The order is a function of the applied events and survives the codec, so
        tensors built from a stored graph sum messages in the same order as ones
        built from the live graph.
        """
        return list(zip(self.edge_src.tolist(), self.edge_dst.tolist(), self.edge_weight.tolist(), strict=True))

    def in_neighbors(self, slot: int) -> set[int]:
        return set(self.edge_src[self.edge_dst == slot].tolist())

    def out_neighbors(self, slot: int) -> set[int]:
        return set(self.edge_dst[self.edge_src == slot].tolist())

    def recency(self) -> list[int]:
        """How many events ago each node was last seen (0 = the latest behaviour)."""
        return (self.state_version - self.last_seq).tolist()

    def seen(self, event_id: str) -> bool:
        return event_key(event_id) in self._ring_set

    # ---- writing -------------------------------------------------------------

    def apply(self, event: Behavior) -> GraphChange:
        """Apply one behaviour; return what changed (``duplicate`` if already applied)."""
        key = event_key(event.event_id)
        if key in self._ring_set:
            return GraphChange(duplicate=True)
        cfg = self.config
        ts = float(event.ts)
        if self.state_version and ts < self.last_ts - cfg.max_lateness_s:
            return GraphChange(late_by=self.last_ts - ts)
        if not self._writable:
            self._own()
        action = cfg.action_index(event.action)
        weight = cfg.action_weight(action) * (1.0 if event.weight is None else float(event.weight))
        nodes: set[int] = set()
        edges: set[tuple[int, int]] = set()
        evicted: str | None = None
        cols = self._cols

        slot = self._slot_of.get(event.item_id)
        if slot is None:
            if self._n < cfg.max_nodes:
                slot = self._new_slot(event.item_id)
            else:
                slot = int(np.argmin(cols["last_seq"][: self._n]))
                evicted = self.item_ids[slot]
                self._evict(slot, nodes, edges)
                self._reset_slot(slot, event.item_id)
        nodes.add(slot)
        cols["counts"][slot] += 1
        cols["last_seen"][slot] = ts
        cols["last_seq"][slot] = self.state_version + 1
        cols["last_action"][slot] = action
        cols["action_mask"][slot] |= np.uint64(1 << action)
        cols["weight_sum"][slot] += weight

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
        return GraphChange(frozenset(nodes), frozenset(edges), evicted)

    def _own(self) -> None:
        """Make every column a writable array of our own (decoded columns view the record's bytes)."""
        for name, col in self._cols.items():
            self._cols[name] = _grown(col, self._n)
        self._src, self._dst, self._w = (_grown(c[: self._ne], self._ne) for c in (self._src, self._dst, self._w))
        self._writable = True

    def _add_edge_weight(self, src: int, dst: int, weight: float) -> None:
        ne = self._ne
        hit = np.flatnonzero((self._src[:ne] == src) & (self._dst[:ne] == dst))
        if len(hit):
            self._w[hit[0]] += weight
            return
        if ne == len(self._src):
            self._src, self._dst, self._w = (_grown(c, ne + 1) for c in (self._src, self._dst, self._w))
        self._src[ne] = src
        self._dst[ne] = dst
        self._w[ne] = weight
        self._ne = ne + 1

    def _new_slot(self, item_id: str) -> int:
        slot = self._n
        if slot == len(self._cols["counts"]):
            for name, col in self._cols.items():
                self._cols[name] = _grown(col, slot + 1)
        for col in self._cols.values():
            col[slot] = 0
        self.item_ids.append(item_id)
        self._n = slot + 1
        self._slot_of[item_id] = slot
        return slot

    def _evict(self, slot: int, nodes: set[int], edges: set[tuple[int, int]]) -> None:
        ne = self._ne
        src, dst = self._src[:ne], self._dst[:ne]
        gone = (src == slot) | (dst == slot)
        if gone.any():
            for s, d in zip(src[gone].tolist(), dst[gone].tolist(), strict=True):
                edges.add((s, d))
                nodes.add(d if s == slot else s)
            keep = ~gone
            kept = int(keep.sum())
            for col in (self._src, self._dst, self._w):
                col[:kept] = col[:ne][keep]
            self._ne = kept
        if self.last_slot == slot:
            self.last_slot = -1
        del self._slot_of[self.item_ids[slot]]

    def _reset_slot(self, slot: int, item_id: str) -> None:
        self.item_ids[slot] = item_id
        for col in self._cols.values():
            col[slot] = 0
        self._slot_of[item_id] = slot

    def _remember(self, key: int) -> None:
        size = self.config.dedupe_ring
        if len(self.ring) < size:
            self.ring.append(key)
        else:
            self._ring_set.discard(self.ring[self.ring_pos])
            self.ring[self.ring_pos] = key
            self.ring_pos = (self.ring_pos + 1) % size
        self._ring_set.add(key)
