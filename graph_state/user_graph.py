"""One user's behaviour graph: items as nodes, weighted transitions as edges."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from graph_state.behavior import Behavior
from graph_state.config import GraphConfig


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


@dataclass
class UserGraph:
    """The bounded behaviour graph of one user.

    Nodes live in slots; a slot keeps its index until its item is evicted, and the
    freed slot takes the next new item. Every field is a pure function of the
    sequence of applied events, so rebuilding a user from its events gives the
    same graph bit for bit.

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

    config: GraphConfig
    state_version: int = 0
    last_slot: int = -1
    last_ts: float = 0.0
    last_event_id: str = ""
    item_ids: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    last_seen: list[float] = field(default_factory=list)
    last_seq: list[int] = field(default_factory=list)
    last_action: list[int] = field(default_factory=list)
    action_mask: list[int] = field(default_factory=list)
    weight_sum: list[float] = field(default_factory=list)
    out_edges: list[dict[int, float]] = field(default_factory=list)
    ring: list[int] = field(default_factory=list)
    ring_pos: int = 0
    cache_key: str = ""
    """Identifies what produced ``cache`` (model version and layout); empty when none."""
    cache: bytes = b""
    """Per-node layer outputs kept for incremental recompute (owned by ``operators``)."""

    def __post_init__(self) -> None:
        self._slot_of = {item: slot for slot, item in enumerate(self.item_ids)}
        # Reverse adjacency is built on first use: most applies never need it.
        self._in_edges_cache: list[set[int]] | None = None
        size = self.config.dedupe_ring
        if len(self.ring) > size or (self.ring_pos and len(self.ring) < size):
            # A changed ring size: keep the newest ids, oldest first.
            ordered = self.ring[self.ring_pos :] + self.ring[: self.ring_pos]
            self.ring, self.ring_pos = ordered[-size:], 0
        self._ring_set = set(self.ring)

    # ---- reading -------------------------------------------------------------

    @property
    def n_nodes(self) -> int:
        return len(self.item_ids)

    def items(self) -> list[str]:
        return list(self.item_ids)

    def slot_of(self, item_id: str) -> int | None:
        return self._slot_of.get(item_id)

    def edges(self) -> list[tuple[int, int, float]]:
        """All directed edges as (src, dst, weight), grouped by source in insertion order.

        The order is a function of the applied events and survives the codec, so
        tensors built from a stored graph sum messages in the same order as ones
        built from the live graph.
        """
        return [(src, dst, w) for src, targets in enumerate(self.out_edges) for dst, w in targets.items()]

    @property
    def _in_edges(self) -> list[set[int]]:
        if self._in_edges_cache is None:
            ins: list[set[int]] = [set() for _ in self.item_ids]
            for src, targets in enumerate(self.out_edges):
                for dst in targets:
                    ins[dst].add(src)
            self._in_edges_cache = ins
        return self._in_edges_cache

    def in_neighbors(self, slot: int) -> set[int]:
        return self._in_edges[slot]

    def recency(self) -> list[int]:
        """How many events ago each node was last seen (0 = the latest behaviour)."""
        return [self.state_version - seq for seq in self.last_seq]

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
        action = cfg.action_index(event.action)
        weight = cfg.action_weight(action) * (1.0 if event.weight is None else float(event.weight))
        nodes: set[int] = set()
        edges: set[tuple[int, int]] = set()
        evicted: str | None = None

        slot = self._slot_of.get(event.item_id)
        if slot is None:
            if len(self.item_ids) < cfg.max_nodes:
                slot = self._new_slot(event.item_id)
            else:
                slot = min(range(len(self.item_ids)), key=self.last_seq.__getitem__)
                evicted = self.item_ids[slot]
                self._evict(slot, nodes, edges)
                self._reset_slot(slot, event.item_id)
        nodes.add(slot)
        self.counts[slot] += 1
        self.last_seen[slot] = ts
        self.last_seq[slot] = self.state_version + 1
        self.last_action[slot] = action
        self.action_mask[slot] |= 1 << action
        self.weight_sum[slot] += weight

        prev = self.last_slot
        if prev >= 0 and prev != slot:
            gap = max(0.0, ts - self.last_ts)
            targets = self.out_edges[prev]
            targets[slot] = targets.get(slot, 0.0) + weight * math.exp(-gap / cfg.decay_seconds)
            if self._in_edges_cache is not None:
                self._in_edges_cache[slot].add(prev)
            edges.add((prev, slot))
            nodes.add(prev)

        self.last_slot = slot
        self.last_ts = ts
        self.last_event_id = event.event_id
        self.state_version += 1
        self._remember(key)
        return GraphChange(frozenset(nodes), frozenset(edges), evicted)

    def _new_slot(self, item_id: str) -> int:
        slot = len(self.item_ids)
        self.item_ids.append(item_id)
        self.counts.append(0)
        self.last_seen.append(0.0)
        self.last_seq.append(0)
        self.last_action.append(0)
        self.action_mask.append(0)
        self.weight_sum.append(0.0)
        self.out_edges.append({})
        if self._in_edges_cache is not None:
            self._in_edges_cache.append(set())
        self._slot_of[item_id] = slot
        return slot

    def _evict(self, slot: int, nodes: set[int], edges: set[tuple[int, int]]) -> None:
        for dst in self.out_edges[slot]:
            self._in_edges[dst].discard(slot)
            edges.add((slot, dst))
            nodes.add(dst)
        for src in self._in_edges[slot]:
            del self.out_edges[src][slot]
            edges.add((src, slot))
            nodes.add(src)
        self.out_edges[slot] = {}
        self._in_edges[slot] = set()
        if self.last_slot == slot:
            self.last_slot = -1
        del self._slot_of[self.item_ids[slot]]

    def _reset_slot(self, slot: int, item_id: str) -> None:
        self.item_ids[slot] = item_id
        self.counts[slot] = 0
        self.last_seen[slot] = 0.0
        self.last_seq[slot] = 0
        self.last_action[slot] = 0
        self.action_mask[slot] = 0
        self.weight_sum[slot] = 0.0
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
