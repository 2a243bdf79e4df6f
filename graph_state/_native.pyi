from typing import Any

def apply(graph: Any, event: Any, replay: bool) -> Any: ...
def apply_events(
    pairs: Any,
    graphs: Any,
    factory: Any,
    known: Any,
    publish: Any,
    applied: Any,
    restore: Any,
    changed: Any,
    earliest: Any,
) -> Any: ...  # graph_state.user_graph.AppliedEvents
def encode(graph: Any, cache: bytes, cache_key: str) -> bytes | None: ...
def event_key(event_id: str) -> int: ...
def setup(
    change_type: type,
    tail_limit: int,
    applied_type: type,
    footprint: tuple[int, int, int, int, int, int],
    delta_type: type,
) -> None: ...
def footprint(graph: Any) -> int | None: ...

API: int

def gather(
    graphs: list[Any],
    owner: object,
    lookup: Any,
    known: dict[str, int] | None = None,
    hashed: tuple[int, int, int] | None = None,
) -> tuple[bytearray, ...] | None: ...
def take_rows(arrays: list[Any], lo: int, hi: int, at: Any, slots: Any) -> bytearray: ...
def put_rows(arrays: list[Any], lo: int, hi: int, at: Any, slots: Any, values: Any) -> None: ...
