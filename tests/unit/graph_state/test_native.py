"""The native core (graph_state/_native.c) against the Python reference it replaces, bit for bit.

``make test`` sets ``RIPPLE_REQUIRE_NATIVE=1``: there a missing build fails instead of skipping, so
CI cannot silently fall back to the Python path.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_state import GraphConfig, UserGraph, decode, encode
from graph_state import user_graph as ug
from tests.conftest import BASE_TS, Ev

if not ug.NATIVE:
    if os.environ.get("RIPPLE_REQUIRE_NATIVE") and not os.environ.get("RIPPLE_PURE_PYTHON"):
        pytest.fail("graph_state._native is not built: run `pip install -e .` with a C compiler", pytrace=False)
    pytest.skip("graph_state._native is not built (no C compiler, or RIPPLE_PURE_PYTHON)", allow_module_level=True)


def python_apply(graph: UserGraph, event: Ev, replay: bool = False) -> ug.GraphChange:
    return graph._apply(event, replay)


def state(graph: UserGraph) -> tuple:
    """Everything an applied event may change, the derived lookups included."""
    return (
        encode(graph),
        graph.item_ids,
        graph._slot_of,
        graph._edge_at,
        graph.ids_memo,
        list(graph.ring),
        sorted(graph._ring_set),
        graph.ring_pos,
        graph.unsaved,
        graph.n_nodes,
        graph.n_edges,
    )


def test_event_key_is_blake2b_64_of_the_utf8():
    for text in ["", "e1", "é漢🙂", "x" * 127, "x" * 128, "x" * 129, "y" * 1000]:
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
        assert ug.event_key(text) == int.from_bytes(digest, "little", signed=True) == ug.py_event_key(text)
    with pytest.raises(UnicodeEncodeError):
        ug.event_key("\ud800")  # a lone surrogate has no UTF-8: as str.encode refuses it
    with pytest.raises(TypeError):
        ug.event_key(b"e1")  # type: ignore[arg-type]


events_strategy = st.lists(
    st.tuples(
        st.integers(0, 30),  # item
        st.sampled_from(["view", "click", "cart", "purchase", "rate", "teleport"]),
        st.floats(-300, 3000),  # gap to the previous ts (negative: a late event)
        st.one_of(st.none(), st.floats(0, 10), st.integers(0, 5)),  # weight
        st.integers(0, 9),  # 0: repeat an earlier event id (a duplicate)
    ),
    max_size=150,
)


@settings(max_examples=120, deadline=None)
@given(
    events=events_strategy,
    max_nodes=st.integers(1, 20),
    ring=st.integers(1, 40),
    lateness=st.sampled_from([float("inf"), 100.0, 0.0]),
    round_trip_every=st.integers(0, 12),
    rows_memo=st.booleans(),
    tail=st.booleans(),
)
def test_native_apply_equals_the_python_reference(events, max_nodes, ring, lateness, round_trip_every, rows_memo, tail):
    """Two graphs fed the same stream, one through ``apply`` (C where it can), one through
    ``_apply`` (Python only): every change and every field equal after every event — through
    evictions, duplicates, late and replayed events, block growth, graphs decoded from their
    record mid-stream (read-only blocks, no edge lookup: the C path declines them), the item-row
    memo and the store's tail."""
    cfg = GraphConfig(max_nodes=max_nodes, dedupe_ring=ring, max_lateness_s=lateness)
    native, python = UserGraph(cfg), UserGraph(cfg)
    owner = object()
    ts = BASE_TS
    for n, (item, action, gap, weight, repeat) in enumerate(events):
        ts += gap
        event_id = f"e{n // 3}" if repeat == 0 else f"e{n}"
        ev = Ev(event_id, f"i{item}", action, ts, weight)
        replay = n % 7 == 3
        assert native.apply(ev, replay=replay) == python_apply(python, ev, replay)
        if rows_memo:
            assert native.slot_rows(owner, len) == python.slot_rows(owner, len)
        assert state(native) == state(python)
        if round_trip_every and n % round_trip_every == 0:
            native, python = decode(encode(native), cfg), decode(encode(python), cfg)
            if tail:
                native.mark_saved("store", tail=True)
                python.mark_saved("store", tail=True)


def test_the_native_path_takes_the_common_event():
    """Not only correct but used: an event on a written graph with room is applied in C."""
    g = UserGraph(GraphConfig(max_nodes=4))
    g.apply(Ev("1", "a"))
    g.apply(Ev("2", "b", ts=BASE_TS + 1))
    change = ug._native.apply(g, Ev("3", "c", ts=BASE_TS + 2), False)
    assert change is not None and change.nodes == {1, 2} and g.state_version == 3
    assert ug._native.apply(g, Ev("3", "c", ts=BASE_TS + 2), False).duplicate
    stored = decode(encode(g), g.config)
    assert ug._native.apply(stored, Ev("4", "d"), False) is None  # read-only blocks: the Python path
    assert stored.state_version == 3 and stored.slot_of("d") is None  # and nothing changed
