"""The embedded store's tails: between full records it writes only the events applied since."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_state import GraphConfig, RocksOptions, RocksStore, UserGraph, encode
from graph_state.rocks_store import _TAIL, _USER
from graph_state.user_graph import TAIL_LIMIT
from tests.conftest import BASE_TS, Ev

_TAILS = RocksOptions(tail_min_nodes=0)
"""Tails for graphs of any size (by default only large graphs get them)."""
_events = st.lists(
    st.tuples(
        st.integers(0, 40),  # event id: repeats are duplicates
        st.integers(0, 9),  # item: more items than slots, so nodes are evicted
        st.sampled_from(["view", "click", "purchase"]),
        st.integers(-30, 300),  # seconds after the previous event: some are late
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(
    events=_events,
    cuts=st.lists(st.integers(1, 7), min_size=1, max_size=30),
    snapshot_every=st.sampled_from([0, 1, 2, 3, 5, 32]),
    reread=st.lists(st.booleans(), min_size=1, max_size=30),
)
def test_a_store_with_tails_reads_back_every_graph_bit_for_bit(tmp_path_factory, events, cuts, snapshot_every, reread):
    """Batches of any size, duplicates, late and evicting events: whatever mix of full records and
    tails was written, the graph read back equals the live one, and continuing the read one writes
    the same records as continuing the live one."""
    cfg = GraphConfig(max_nodes=4, max_lateness_s=60.0, dedupe_ring=16)
    store = RocksStore(
        tmp_path_factory.mktemp("db"), cfg, RocksOptions(snapshot_every=snapshot_every, tail_min_nodes=0)
    )
    live = UserGraph(cfg)
    ts, at, batch = BASE_TS, 0, 0
    while at < len(events):
        size = cuts[batch % len(cuts)]
        for event_id, item, action, gap in events[at : at + size]:
            ts += gap
            live.apply(Ev(str(event_id), f"i{item}", action, ts))
        store.put_many({"u": live})
        back = store.get_many(["u"])["u"]
        assert encode(back, include_cache=False) == encode(live, include_cache=False)
        assert back.unsaved == live.unsaved  # the tail replayed is the one kept
        if reread[batch % len(reread)]:
            live = back  # go on from what was read: its tail must continue the stored record
        at += size
        batch += 1
    store.close()


def _records(store: RocksStore, user: str) -> tuple[bytes | None, bytes | None]:
    key = user.encode()
    return store._db.get(_USER + key), store._db.get(_TAIL + key)


def _record_then_tail(tmp_path, cfg: GraphConfig) -> tuple[RocksStore, UserGraph]:
    """A store holding a 1-event record of user ``u`` and a tail of its second event."""
    store = RocksStore(tmp_path / "db", cfg, _TAILS)
    g = UserGraph(cfg)
    g.apply(Ev("1", "a"))
    store.put_many({"u": g})
    g.apply(Ev("2", "b"))
    store.put_many({"u": g})
    assert _records(store, "u")[1] is not None
    return store, g


def test_between_full_records_only_the_tail_is_written(tmp_path):
    cfg = GraphConfig()
    store = RocksStore(tmp_path / "db", cfg, RocksOptions(snapshot_every=3, tail_min_nodes=0))
    g = UserGraph(cfg)
    g.apply(Ev("1", "a"))
    store.put_many({"u": g})
    record, tail = _records(store, "u")
    assert record is not None and tail is None  # a new user: its full record
    for n in (2, 3):
        g.apply(Ev(str(n), f"i{n}"))
        store.put_many({"u": g})
        assert _records(store, "u")[0] == record  # the full record is not rewritten
        assert len(_records(store, "u")[1] or b"") < len(record)
    g.apply(Ev("4", "i4"))
    store.put_many({"u": g})  # 3 events since the record: a full one again, the tail deleted
    record, tail = _records(store, "u")
    assert tail is None and encode(store.get_many(["u"])["u"]) == encode(g)
    store.put_many({"u": g})  # nothing applied since: nothing to write
    assert _records(store, "u") == (record, None)
    store.close()


def test_a_tail_older_than_the_record_is_not_replayed_and_a_corrupt_one_is_named(tmp_path):
    cfg = GraphConfig()
    store, g = _record_then_tail(tmp_path, cfg)
    stale = _records(store, "u")[1]
    assert stale is not None
    store._db.put(_USER + b"u", encode(g))  # a full record written after the tail, the tail left over
    assert encode(store.get_many(["u"])["u"]) == encode(g)
    other = UserGraph(cfg)  # another history of the user at the tail's base version
    other.apply(Ev("x", "c"))
    store._db.put(_USER + b"u", encode(other))
    store._db.put(_TAIL + b"u", stale)
    assert encode(store.get_many(["u"])["u"]) == encode(other)
    store._db.put(_TAIL + b"u", b"\x01garbage")
    with pytest.raises(ValueError, match=r"tail record is corrupt .*delete the key"):
        store.get_many(["u"])
    store.close()


def test_replaying_a_tail_does_not_refuse_events_a_stricter_lateness_would(tmp_path):
    """The tail's events were applied under the settings of their time; a tighter
    RIPPLE_MAX_LATENESS_S later must not drop them from the history on the next read."""
    path = tmp_path / "db"
    store = RocksStore(path, GraphConfig(max_lateness_s=math.inf), _TAILS)
    g = UserGraph(GraphConfig(max_lateness_s=math.inf))
    g.apply(Ev("1", "a", ts=BASE_TS + 1000))
    store.put_many({"u": g})
    g.apply(Ev("2", "b", ts=BASE_TS))  # 1,000 s late: accepted then
    store.put_many({"u": g})
    store.close()
    strict = RocksStore(path, GraphConfig(max_lateness_s=10.0), _TAILS)
    back = strict.get_many(["u"])["u"]
    assert back.state_version == 2 and encode(back) == encode(g)
    strict.close()


def test_deleting_a_user_deletes_its_tail(tmp_path):
    cfg = GraphConfig()
    store, _ = _record_then_tail(tmp_path, cfg)
    assert store.delete("u")
    assert _records(store, "u") == (None, None) and store.get_many(["u"]) == {}
    fresh = UserGraph(cfg)  # the user comes back: nothing of the old tail is replayed onto it
    fresh.apply(Ev("9", "z"))
    store.put_many({"u": fresh})
    assert encode(store.get_many(["u"])["u"]) == encode(fresh)
    store.close()


def test_a_graph_stops_keeping_its_tail_past_the_limit_and_is_written_in_full(tmp_path):
    cfg = GraphConfig(max_nodes=8)
    store = RocksStore(tmp_path / "db", cfg, RocksOptions(snapshot_every=10 * TAIL_LIMIT, tail_min_nodes=0))
    g = UserGraph(cfg)
    g.apply(Ev("0", "a"))
    store.put_many({"u": g})
    for n in range(1, TAIL_LIMIT + 2):
        g.apply(Ev(str(n), f"i{n % 8}"))
    assert g.unsaved is None  # bounded memory whatever snapshot_every is
    store.put_many({"u": g})
    assert _records(store, "u")[1] is None and g.unsaved == []
    assert encode(store.get_many(["u"])["u"]) == encode(g)
    store.close()


def test_small_graphs_are_always_written_in_full(tmp_path):
    """Tails follow only a record of at least ``tail_min_nodes`` nodes; reads look for them only
    there — and a store reopened with a larger setting still finds the tails written before."""
    cfg = GraphConfig(max_nodes=600)
    store = RocksStore(tmp_path / "db", cfg, RocksOptions(tail_min_nodes=300))
    g = UserGraph(cfg)
    for n in range(299):
        g.apply(Ev(str(n), f"i{n}"))
    store.put_many({"u": g})
    assert g.unsaved is None  # a 299-node record: no events kept for a tail
    g.apply(Ev("299", "i299"))
    store.put_many({"u": g})  # 300 nodes, in full
    assert _records(store, "u")[1] is None and g.unsaved == []
    g.apply(Ev("300", "i300"))
    store.put_many({"u": g})
    assert _records(store, "u")[1] is not None  # after a 300-node record: only the tail
    assert encode(store.get_many(["u"])["u"]) == encode(g)
    store.close()
    larger = RocksStore(tmp_path / "db", cfg, RocksOptions(tail_min_nodes=1000))
    assert encode(larger.get_many(["u"])["u"]) == encode(g)
    larger.close()


def test_a_graph_keeps_no_tail_until_a_store_writing_tails_has_saved_it():
    """The worker's Faust table writes full records only: its graphs must not collect events."""
    from graph_state import decode

    cfg = GraphConfig()
    g = UserGraph(cfg)
    for n in range(5):
        g.apply(Ev(str(n), f"i{n}"))
    assert g.unsaved is None
    back = decode(encode(g), cfg)  # as the table store reads it
    back.apply(Ev("9", "z"))
    assert back.unsaved is None
    back.mark_saved(object(), tail=True)
    back.apply(Ev("10", "y"))
    assert back.unsaved is not None and [e[0] for e in back.unsaved] == ["10"]


def test_a_graph_keeps_its_attributes_in_slots_not_a_dict():
    """Slots: a graph's attributes inline (no ~1 KB dict per graph) and read by offset; an
    attribute without a slot is refused instead of silently growing every graph."""
    g = UserGraph(GraphConfig())
    g.apply(Ev("1", "a"))
    assert not hasattr(g, "__dict__") and g.state_version == 1
    with pytest.raises(AttributeError):
        g.scratch = 1  # type: ignore[attr-defined]


def test_a_due_layer_cache_is_written_in_full_even_between_tails(tmp_path):
    cfg = GraphConfig()
    store = RocksStore(tmp_path / "db", cfg, RocksOptions(persist_cache_every=2, tail_min_nodes=0))
    g = UserGraph(cfg)
    g.apply(Ev("1", "a"))
    store.put_many({"u": g})
    g.apply(Ev("2", "b"))
    g.cache_key, g.cache = "model@2", b"\x01" * 8
    store.put_many({"u": g})  # version 2, a multiple: the full record with its cache, no tail
    assert _records(store, "u")[1] is None
    g.cache_key, g.cache = "other-model@2", b"\x02" * 8  # a model swap: same graph, new cache
    store.put_many({"u": g})
    back = store.get_many(["u"])["u"]
    assert (back.cache_key, back.cache) == ("other-model@2", b"\x02" * 8)
    store.close()
