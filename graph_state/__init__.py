"""Per-user behaviour graphs: structure, event application, codec and stores."""

from graph_state.behavior import Behavior
from graph_state.codec import CODEC_VERSION, apply_tail, decode, encode, encode_stored, encode_tail
from graph_state.config import DEFAULT_ACTION_WEIGHTS, DEFAULT_ACTIONS, GraphConfig
from graph_state.rocks_store import RocksOptions, RocksStore
from graph_state.store import CachedStore, GraphStore, MemoryStore
from graph_state.user_graph import (
    AppliedEvents,
    Gathered,
    GraphChange,
    UserDelta,
    UserGraph,
    apply_events,
    event_key,
    gather,
)

__all__ = [
    "AppliedEvents",
    "CODEC_VERSION",
    "DEFAULT_ACTIONS",
    "DEFAULT_ACTION_WEIGHTS",
    "Behavior",
    "CachedStore",
    "Gathered",
    "GraphChange",
    "GraphConfig",
    "GraphStore",
    "MemoryStore",
    "RocksOptions",
    "RocksStore",
    "UserDelta",
    "UserGraph",
    "apply_events",
    "apply_tail",
    "decode",
    "encode",
    "encode_stored",
    "encode_tail",
    "event_key",
    "gather",
]
