"""Versioned compact binary codec for :class:`UserGraph`.

Layout: one version byte, then a msgpack array whose numeric columns are packed
little-endian byte strings (``array`` module), so a 1000-node graph decodes with
a handful of ``frombytes`` calls instead of thousands of Python objects.
"""

from __future__ import annotations

import sys
from array import array

import msgspec

from graph_state.config import GraphConfig
from graph_state.user_graph import UserGraph

CODEC_VERSION = 1
E_EMPTY = "cannot decode an empty graph record; the store holds a zero-length value for this key (delete it)."
E_VERSION = (
    "graph record has codec version {found}, this build reads version {expected}; "
    "upgrade Ripple or rebuild the state from the changelog/events."
)
E_CORRUPT = "graph record is corrupt ({cause}); delete the key and rebuild it from the changelog/events."


class _Record(msgspec.Struct, array_like=True):
    state_version: int
    last_slot: int
    last_ts: float
    last_event_id: str
    item_ids: list[str]
    counts: bytes
    last_seen: bytes
    last_seq: bytes
    last_action: bytes
    action_mask: bytes
    weight_sum: bytes
    edge_src: bytes
    edge_dst: bytes
    edge_weight: bytes
    ring: bytes
    ring_pos: int
    cache_key: str
    cache: bytes


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Record)
_LITTLE = sys.byteorder == "little"


def _pack(code: str, values: list[int] | list[float]) -> bytes:
    arr = array(code, values)
    if not _LITTLE:
        arr.byteswap()
    return arr.tobytes()


def _unpack(code: str, raw: bytes) -> list:
    arr = array(code)
    arr.frombytes(raw)
    if not _LITTLE:
        arr.byteswap()
    return arr.tolist()


def encode(graph: UserGraph, include_cache: bool = True) -> bytes:
    """Serialise a graph (its config is not stored; it comes from settings).

    ``include_cache=False`` drops the per-node layer cache: it is derived data,
    often larger than the graph, and a graph stored without it is simply
    recomputed in full the next time it is embedded.
    """
    src: list[int] = []
    dst: list[int] = []
    weight: list[float] = []
    for s, targets in enumerate(graph.out_edges):
        if targets:
            src.extend([s] * len(targets))
            dst.extend(targets.keys())
            weight.extend(targets.values())
    record = _Record(
        state_version=graph.state_version,
        last_slot=graph.last_slot,
        last_ts=graph.last_ts,
        last_event_id=graph.last_event_id,
        item_ids=graph.item_ids,
        counts=_pack("q", graph.counts),
        last_seen=_pack("d", graph.last_seen),
        last_seq=_pack("q", graph.last_seq),
        last_action=_pack("b", graph.last_action),
        action_mask=_pack("Q", graph.action_mask),
        weight_sum=_pack("d", graph.weight_sum),
        edge_src=_pack("i", src),
        edge_dst=_pack("i", dst),
        edge_weight=_pack("d", weight),
        ring=_pack("q", graph.ring),
        ring_pos=graph.ring_pos,
        cache_key=graph.cache_key if include_cache else "",
        cache=graph.cache if include_cache else b"",
    )
    return bytes((CODEC_VERSION,)) + _encoder.encode(record)


def decode(data: bytes, config: GraphConfig) -> UserGraph:
    """Inverse of :func:`encode`; raises ``ValueError`` naming the cause and the fix."""
    if not data:
        raise ValueError(E_EMPTY)
    if data[0] != CODEC_VERSION:
        raise ValueError(E_VERSION.format(found=data[0], expected=CODEC_VERSION))
    try:
        r = _decoder.decode(memoryview(data)[1:])
        n = len(r.item_ids)
        out_edges: list[dict[int, float]] = [{} for _ in range(n)]
        for s, d, w in zip(
            _unpack("i", r.edge_src), _unpack("i", r.edge_dst), _unpack("d", r.edge_weight), strict=True
        ):
            out_edges[s][d] = w
        columns = {
            "counts": _unpack("q", r.counts),
            "last_seen": _unpack("d", r.last_seen),
            "last_seq": _unpack("q", r.last_seq),
            "last_action": _unpack("b", r.last_action),
            "action_mask": _unpack("Q", r.action_mask),
            "weight_sum": _unpack("d", r.weight_sum),
        }
        if any(len(col) != n for col in columns.values()):
            raise ValueError("node columns differ in length")
        return UserGraph(
            config=config,
            state_version=r.state_version,
            last_slot=r.last_slot,
            last_ts=r.last_ts,
            last_event_id=r.last_event_id,
            item_ids=r.item_ids,
            out_edges=out_edges,
            ring=_unpack("q", r.ring),
            ring_pos=r.ring_pos,
            cache_key=r.cache_key,
            cache=r.cache,
            **columns,
        )
    except (msgspec.DecodeError, ValueError, IndexError) as exc:
        raise ValueError(E_CORRUPT.format(cause=exc)) from exc
