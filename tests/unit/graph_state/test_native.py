"""The native core (graph_state/_native.c) against the Python reference it replaces, bit for bit.

``make test`` sets ``RIPPLE_REQUIRE_NATIVE=1``: there a missing build fails instead of skipping, so
CI cannot silently fall back to the Python path.
"""

from __future__ import annotations

import hashlib
import os
from typing import NamedTuple

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_state import GraphConfig, UserGraph, codec, decode, encode, rows
from graph_state import user_graph as ug
from tests.conftest import BASE_TS, Ev

if not ug.NATIVE:
    if os.environ.get("RIPPLE_REQUIRE_NATIVE") and not os.environ.get("RIPPLE_PURE_PYTHON"):
        pytest.fail("graph_state._native is not built: run `pip install -e .` with a C compiler", pytrace=False)
    pytest.skip("graph_state._native is not built (no C compiler, or RIPPLE_PURE_PYTHON)", allow_module_level=True)


def python_apply(graph: UserGraph, event: Ev, replay: bool = False) -> ug.GraphChange:
    return graph._apply(event, replay)


def state(graph: UserGraph) -> tuple:
    """Everything an applied event may change, the derived lookups included. The ids memo that the
    C ``apply`` keeps up to date in place must equal the ids encoded afresh."""
    memo = graph.ids_memo
    if isinstance(memo, bytearray):
        assert memo == msgspec.msgpack.encode(graph.item_ids)
    assert graph._ring_set is None or graph._ring_set == set(graph.ring)  # the C path never builds it
    return (
        encode(graph),
        graph.item_ids,
        graph._slot_of,
        graph._edge_lookup(),  # (built when missing: the C path builds it before writing, Python when adding an edge)
        graph.ids_memo,
        list(graph.ring),
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


def test_the_native_path_takes_every_event_of_an_ordinary_graph():
    """Not only correct but used: new, written and decoded graphs, growing blocks included, are all
    applied in C (a decoded graph's read-only blocks are copied by ``_reserve`` first), and no
    set of ring keys is built."""
    g = UserGraph(GraphConfig(max_nodes=40))
    for n in range(30):  # past the first capacities of 8 nodes and 8 edges
        assert ug._native.apply(g, Ev(str(n), f"i{n}", ts=BASE_TS + n), False) is not None
    assert ug._native.apply(g, Ev("3", "i3"), False).duplicate
    stored = decode(encode(g), g.config)
    change = ug._native.apply(stored, Ev("x", "new", ts=BASE_TS + 99), False)
    assert change is not None and change.nodes == {29, 30} and stored.state_version == 31
    assert g._ring_set is None and stored._ring_set is None
    assert stored.seen("x") and stored.seen("0") and not stored.seen("y")


def test_a_block_of_rows_of_a_wider_array_is_not_read_as_its_own():
    """The C code reads numpy's int64 blocks from the array object (not through the buffer protocol)
    only when they are C-contiguous: a block that is a slice of a wider array's rows is declined by
    apply and encode (the Python paths take it) and gathered by its strides."""
    cfg = GraphConfig(max_nodes=40)
    g = UserGraph(cfg)
    for n in range(5):
        g.apply(Ev(str(n), f"i{n}", ts=BASE_TS + n))
    wide = np.zeros((g._nodes.shape[0], 64), dtype=np.int64)
    wide[:, : g._nodes.shape[1]] = g._nodes
    g._set_nodes(wide[:, :32])  # room for 32 nodes, rows 64 apart
    assert not g._nodes.flags.c_contiguous
    assert ug._native.encode(g, b"", "") is None
    native = ug.gather([g], object(), len)
    python = ug.py_gather([g], object(), len)
    for field, a, b in zip(ug.Gathered._fields, native, python, strict=True):
        assert (a == b).all(), field
    assert ug._native.apply(g, Ev("x", "i9", ts=BASE_TS + 50), False) is None
    assert g.state_version == 5 and (wide[:, 32:] == 0).all()


def test_the_c_code_reads_attributes_as_the_type_says_after_it_changed():
    """The C code reads a slot at its offset, cached per type, only while the type is unchanged: a
    property put over a slot of the type (after the C code read that slot) is what it then reads."""

    class Probe(UserGraph):  # a type of this test's own: changing it touches nothing else
        __slots__ = ()

    g = Probe(GraphConfig(max_lateness_s=60.0))
    for n in range(3):
        assert ug._native.apply(g, Ev(str(n), f"i{n}", ts=BASE_TS + n), False).late_by == 0.0
    Probe.last_ts = property(lambda self: BASE_TS + 10**6)  # type: ignore[assignment,method-assign]
    try:
        change = ug._native.apply(g, Ev("late", "i9", ts=BASE_TS + 10), False)
    finally:
        del Probe.last_ts
    assert change.late_by == pytest.approx(10**6 - 10)
    assert ug._native.apply(g, Ev("3", "i3", ts=BASE_TS + 3), False).late_by == 0.0 and g.state_version == 4


@pytest.mark.parametrize("kind", ["new", "written", "decoded", "decoded then written", "python path", "cached"])
def test_native_footprint_equals_the_python_reference(kind):
    """The graph cache's measure of a graph, in C, is the Python one's: own blocks or the record a
    decoded graph's views hold, its layer cache (bytes or an array), the edge lookup, the ring and the
    set of its keys (only the Python path builds that), the scalar views."""
    cfg = GraphConfig(max_nodes=12)
    g = UserGraph(cfg)
    if kind != "new":
        for n in range(20):  # past the first capacity, and evicting
            g.apply(Ev(str(n), f"i{n % 15}", ts=BASE_TS + n, weight=n % 2 or None))
    if kind.startswith("decoded"):
        g = decode(encode(g), cfg)
    if kind == "decoded then written":
        g.apply(Ev("w", "i3", ts=BASE_TS + 99))
    if kind == "python path":
        g._apply(Ev("p", "i4", ts=BASE_TS + 100), False)  # builds the ring's set and the scalar views
        assert g._ring_set is not None and g._node_views is not None
    if kind == "cached":
        g.cache = np.ones((3, g.n_nodes, 8), dtype=np.float32)
    size = ug._native.footprint(g)
    assert size is not None and size == g.py_footprint() == g.footprint()
    if kind == "decoded":
        assert g._nodes.base is not None  # the record's bytes counted once for both blocks


def assert_same_record(graph: UserGraph, cache: bytes, cache_key: str) -> None:
    """Both encoders, each making its own ids memo (a memo one made would hide the other's ids)."""
    graph.ids_memo = None
    native = ug._native.encode(graph, cache, cache_key)
    graph.ids_memo = None
    assert native == codec.py_encode(graph, cache, cache_key)


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=300)


@settings(max_examples=80, deadline=None)
@given(
    items=st.lists(names, min_size=1, max_size=40),
    event_ids=st.lists(names, min_size=1, max_size=40),
    steps=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 39), st.floats(-(2**40), 2**40)), max_size=120),
    max_nodes=st.integers(1, 70),
    ring=st.sampled_from([1, 7, 256, 300]),
    cache=st.binary(max_size=64),
    cache_key=st.one_of(st.just(""), names),
    decoded=st.booleans(),
)
def test_native_encode_equals_the_python_reference(items, event_ids, steps, max_nodes, ring, cache, cache_key, decoded):
    """The C record is the Python record byte for byte for graphs built by events: ids up to 300
    UTF-8 characters, blocks with spare capacity or read-only views of a record, the ids memo made
    by either side."""
    cfg = GraphConfig(max_nodes=max_nodes, dedupe_ring=ring)
    g = UserGraph(cfg)
    ts = BASE_TS
    for n, (item, eid, gap) in enumerate(steps):
        ts = max(ts + gap, 0.0)
        g.apply(Ev(f"{event_ids[eid % len(event_ids)]}-{n}", items[item % len(items)], ts=ts))
        if n % 17 == 0:
            assert_same_record(g, cache, cache_key)
    if decoded:
        g = decode(codec.py_encode(g, cache, cache_key), cfg)
    g.ids_memo = None
    fresh = ug._native.encode(g, cache, cache_key)
    assert isinstance(g.ids_memo, bytearray)  # the memo the C side made, read by the Python side
    assert fresh == codec.py_encode(g, cache, cache_key)
    g.ids_memo = None  # and the Python side's memo read by the C side
    assert codec.py_encode(g, cache, cache_key) == ug._native.encode(g, cache, cache_key) == fresh
    assert encode(decode(fresh, cfg)) == fresh  # the record reads back to itself


BOUNDS = [
    0,
    1,
    15,
    16,
    31,
    32,
    127,
    128,
    255,
    256,
    32767,
    32768,
    65535,
    65536,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**63 - 1,
]
SIGNED = sorted({*BOUNDS, *(-b for b in BOUNDS), -33, -129, -32769, -(2**31) - 1, -(2**63)})


@pytest.mark.parametrize("value", SIGNED)
def test_native_encode_writes_every_msgpack_width_as_msgspec_does(value):
    """Each header field at each boundary of msgpack's int, str and array widths (the scalars are
    set directly: no event stream reaches a version of 2**32)."""
    size = min(abs(value), 65536)  # str and array lengths: 31/32, 255/256, 65535/65536 among them
    n = size if size in (15, 16, 65535, 65536) else size % 20
    g = UserGraph(
        GraphConfig(),
        state_version=value,
        last_slot=value,
        last_ts=float(value),
        last_event_id="é" * (size // 2) + "x" * (size % 2),
        item_ids=[str(i) for i in range(n)],
        nodes=np.zeros((6, n), dtype=np.int64),
        ring_pos=abs(value),
    )
    assert_same_record(g, b"c" * size, "k" * size)


def test_the_ids_memo_follows_new_and_evicted_items_in_place():
    """Through the array header's widening (15 -> 16 items) and evictions that swap ids of other
    lengths, the memo the C ``apply`` edits in place stays the ids' msgpack encoding."""
    g = UserGraph(GraphConfig(max_nodes=18))
    for n in range(60):
        item = "x" * (n % 5) + str(n) if n < 18 else "long-" * (n % 7) + str(n)  # evictions from the 19th
        g.apply(Ev(f"e{n}", item, ts=BASE_TS + n))
        memo = g.ids_memo
        assert memo is None or memo == msgspec.msgpack.encode(g.item_ids), n
        encode(g)  # (re)makes the memo when it was dropped
        assert isinstance(g.ids_memo, bytearray)
    assert g.n_nodes == 18 and g.state_version == 60


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 60), min_size=0, max_size=12),
    decoded=st.lists(st.booleans(), min_size=12, max_size=12),
    memo=st.sampled_from(["none", "current", "stale", "other owner"]),
    known=st.sampled_from(["none", "some", "all"]),
)
def test_native_gather_equals_the_python_reference(sizes, decoded, memo, known):
    """The batch columns of graphs of every kind — written, decoded (read-only views of their
    record), with a current, stale, missing or foreign row memo, new items' rows known beforehand
    or looked up — equal numpy's concatenation, and leave the same row memo behind."""
    cfg = GraphConfig(max_nodes=25)
    graphs = []
    for i, n_events in enumerate(sizes):
        g = UserGraph(cfg)
        for n in range(n_events):
            g.apply(Ev(f"{i}-{n}", f"i{(n * 7 + i) % 40}", ts=BASE_TS + n, weight=n % 3 or None))
        graphs.append(decode(encode(g), cfg) if decoded[i] else g)
    owner, other = object(), object()
    rows = {f"i{k}": 1000 + k for k in range(40)} | {"fresh": 2000, "fresh2": 2001}
    lookup = rows.__getitem__
    for g in graphs:
        if memo in ("current", "stale"):
            g.slot_rows(owner, lookup)
        if memo == "stale":  # new slots (or evictions' reused ones): their rows are stale
            g.apply(Ev(f"{id(g)}-new", "fresh", ts=BASE_TS + 10**4))
            g.apply(Ev(f"{id(g)}-new2", "fresh2", ts=BASE_TS + 10**4 + 1))
        if memo == "other owner":
            g.slot_rows(other, len)
    resolved = {"none": None, "some": {k: v for k, v in rows.items() if v % 2}, "all": rows}[known]
    native = ug.gather(graphs, owner, lookup, resolved)
    for g in graphs:  # the memo each graph keeps is current, as slot_rows leaves it
        if g._rows_owner is owner:
            assert g._stale_rows == [] and list(g._rows) == [lookup(item) for item in g.item_ids]
    python = ug.py_gather(graphs, owner, lookup)
    for field, a, b in zip(ug.Gathered._fields, native, python, strict=True):
        assert a.dtype == b.dtype == np.int64 and a.shape == b.shape and (a == b).all(), field
    assert native.rows.tolist() == [lookup(item) for g in graphs for item in g.item_ids]


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 9), st.integers(0, 5)), min_size=1, max_size=8),
    layers=st.integers(1, 4),
    lo=st.integers(0, 3),
    width=st.integers(0, 3),
    seed=st.integers(0, 1000),
)
def test_native_rows_equal_the_numpy_reference(shapes, layers, lo, width, seed):
    """take_rows / put_rows over per-graph [layers, nodes, d] arrays: the same rows as numpy's
    fancy indexing, repeated slots and graphs without rows included."""
    rng = np.random.default_rng(seed)
    lo = min(lo, layers)
    hi = min(lo + width, layers)
    arrays = [rng.standard_normal((layers, n, 3)).astype(np.float32) for n, _ in shapes]
    slots = np.concatenate([rng.integers(0, n, k) for n, k in shapes]).astype(np.int64)
    at = np.concatenate([[0], np.cumsum([k for _, k in shapes])]).astype(np.int64)
    taken = rows.take_rows(arrays, lo, hi, at, slots)
    assert taken.shape == (hi - lo, len(slots), 3)
    np.testing.assert_array_equal(taken, rows.py_take_rows(arrays, lo, hi, at, slots))
    values = rng.standard_normal(taken.shape).astype(np.float32)
    copies = [a.copy() for a in arrays]
    rows.put_rows(arrays, lo, hi, at, slots, values)
    rows.py_put_rows(copies, lo, hi, at, slots, values)
    for a, b in zip(arrays, copies, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(IndexError):  # one past the first array's last node
        rows.take_rows(arrays, 0, 1, np.array([0, 1] + [1] * (len(arrays) - 1)), np.array([shapes[0][0]]))


def test_an_item_id_that_is_not_a_string_drops_the_memo_instead_of_failing():
    """Events are validated before they reach a graph, but ``apply`` itself does not require str
    ids (the Python path never did): the C path keeps going and drops the ids memo, as Python does."""
    g = UserGraph(GraphConfig(max_nodes=3))
    g.apply(Ev("1", "a"))
    encode(g)
    assert isinstance(g.ids_memo, bytearray)
    change = g.apply(Ev("2", 7, ts=BASE_TS + 1))  # type: ignore[arg-type]
    assert change.nodes == {0, 1} and g.ids_memo is None and g.item_ids == ["a", 7]


class Rec(NamedTuple):
    """A record as apply_events reads it: only its timestamp."""

    timestamp: float | None


@settings(max_examples=80, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.integers(0, 4),  # user
            st.integers(0, 12),  # item
            st.sampled_from(["view", "cart", "teleport"]),  # teleport: not among the known actions
            st.floats(-300, 600),  # gap (negative: late where lateness allows less)
            st.integers(0, 6),  # 0: an earlier event id again; 1: the existing state's latest (a redelivery)
            st.one_of(st.none(), st.floats(0, 1e6)),  # the record's timestamp
        ),
        max_size=80,
    ),
    existing=st.sets(st.integers(0, 4), max_size=3),
    lateness=st.sampled_from([float("inf"), 100.0]),
)
def test_apply_events_in_c_equals_the_python_loop(events, existing, lateness):
    """One micro-batch through ``apply_events`` (C) and ``py_apply_events``: the same counts and
    late events, every dict with the same entries in the same order, the same graphs after."""
    cfg = GraphConfig(max_nodes=6, max_lateness_s=lateness)
    pairs, ts = [], BASE_TS
    for n, (user, item, action, gap, repeat, stamp) in enumerate(events):
        ts += gap
        event_id = f"e{n // 2}" if repeat == 0 else "old" if repeat == 1 else f"e{n}"
        ev = Ev(event_id, f"i{item}", action, ts, None, f"u{user}")
        pairs.append((Rec(stamp), ev))
    outcomes = []
    for run in (ug._native.apply_events, ug.py_apply_events):
        graphs = {}
        for user in sorted(existing):  # users with state from earlier batches
            graphs[f"u{user}"] = g = UserGraph(cfg)
            g.apply(Ev("old", "i0", "view", BASE_TS - 50, None, f"u{user}"))
        dicts: list[dict] = [{}, {}, {}, {}, {}]  # publish, applied, restore, changed, earliest
        counts = run(list(pairs), graphs, lambda: UserGraph(cfg), frozenset(cfg.actions), *dicts)
        ids = {id(g): uid for uid, g in graphs.items()}
        shown = [[(k, ids[id(v)] if isinstance(v, UserGraph) else v) for k, v in d.items()] for d in dicts]
        outcomes.append((counts, shown, [(uid, state(g)) for uid, g in graphs.items()]))
    assert outcomes[0] == outcomes[1]


def test_apply_events_refuses_what_is_not_a_batch():
    g = {"u0": UserGraph(GraphConfig())}
    with pytest.raises(TypeError, match="pairs"):
        ug._native.apply_events([Ev("e1", "i1")], g, UserGraph, frozenset(), {}, {}, {}, {}, {})
    with pytest.raises(TypeError, match="dicts"):
        ug._native.apply_events([], g, UserGraph, frozenset(), {}, {}, {}, {}, [])
    with pytest.raises(TypeError, match="sequence"):
        ug._native.apply_events(None, g, UserGraph, frozenset(), {}, {}, {}, {}, {})
    assert ug._native.apply_events((), g, UserGraph, frozenset(), {}, {}, {}, {}, {}) == (0, 0, 0, 0, [])
