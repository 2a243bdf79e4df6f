from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_state import CODEC_VERSION, GraphConfig, MemoryStore, RocksStore, UserGraph, decode, encode
from tests.conftest import BASE_TS, Ev

item_ids = st.text(min_size=1, max_size=20)


@settings(max_examples=80, deadline=None)
@given(
    steps=st.lists(
        st.tuples(item_ids, st.sampled_from(["view", "cart", "x"]), st.floats(0, 1e5), st.none() | st.floats(0, 10)),
        max_size=120,
    ),
    max_nodes=st.integers(1, 20),
    cache=st.binary(max_size=64),
)
def test_codec_round_trip(steps, max_nodes, cache):
    cfg = GraphConfig(max_nodes=max_nodes, dedupe_ring=16)
    g = UserGraph(cfg)
    ts = BASE_TS
    for n, (item, action, gap, weight) in enumerate(steps):
        ts += gap
        g.apply(Ev(f"e{n % 70}", item, action, ts, weight))
    g.cache_key, g.cache = "m1", cache
    back = decode(encode(g), cfg)
    assert encode(back) == encode(g)
    for name in (
        "state_version",
        "last_slot",
        "last_ts",
        "item_ids",
        "counts",
        "last_seen",
        "last_seq",
        "last_action",
        "action_mask",
        "weight_sum",
        "ring",
        "ring_pos",
        "cache",
        "cache_key",
    ):
        assert getattr(back, name) == getattr(g, name), name
    assert back.edges() == g.edges()
    # The decoded graph keeps behaving exactly like the original.
    nxt = Ev("next", "new-item", "click", ts + 1)
    assert back.apply(nxt) == g.apply(nxt)
    assert encode(back) == encode(g)


def test_codec_rejects_unknown_version_and_garbage():
    cfg = GraphConfig()
    with pytest.raises(ValueError, match="codec version 99"):
        decode(bytes([99]) + b"xx", cfg)
    with pytest.raises(ValueError, match="corrupt"):
        decode(bytes([CODEC_VERSION]) + b"\x93garbage", cfg)
    with pytest.raises(ValueError, match="empty"):
        decode(b"", cfg)


def test_codec_is_compact():
    g = UserGraph(GraphConfig(max_nodes=50))
    for n in range(200):
        g.apply(Ev(f"event-{n}", f"item-{n % 50}", "view", BASE_TS + n))
    assert len(encode(g)) < 6000  # ~50 nodes, ~50 edges, a 200-entry id ring


@pytest.mark.parametrize("kind", ["memory", "rocks"])
def test_store_interface(kind, tmp_path):
    cfg = GraphConfig()
    store = MemoryStore(cfg) if kind == "memory" else RocksStore(tmp_path / "db", cfg)
    g = UserGraph(cfg)
    g.apply(Ev("1", "a"))
    store.put_many({"u1": g, "u2": g}, meta={"progress": b"12"})
    assert set(store.get_many(["u1", "u2", "u3"])) == {"u1", "u2"}
    assert encode(store.get_many(["u1"])["u1"]) == encode(g)
    assert store.get_meta("progress") == b"12" and store.get_meta("nope") is None
    assert sorted(store.user_ids()) == ["u1", "u2"]
    assert store.delete("u1") and not store.delete("u1")
    assert sorted(store.user_ids()) == ["u2"]
    store.close()


def test_rocks_store_persists_and_reports_lock(tmp_path):
    cfg = GraphConfig()
    g = UserGraph(cfg)
    g.apply(Ev("1", "a"))
    store = RocksStore(tmp_path / "db", cfg)
    store.put_many({"u1": g})
    with pytest.raises(RuntimeError, match="in use by another Ripple process"):
        RocksStore(tmp_path / "db", cfg)
    store.close()
    again = RocksStore(tmp_path / "db", cfg)
    assert encode(again.get_many(["u1"])["u1"]) == encode(g)
    again.close()


def test_rocks_store_persists_the_layer_cache_only_every_n_versions(tmp_path):
    from graph_state import RocksOptions

    cfg = GraphConfig()
    store = RocksStore(tmp_path / "db", cfg, RocksOptions(persist_cache_every=2))
    g = UserGraph(cfg)
    g.apply(Ev("1", "a"))
    g.cache_key, g.cache = "model@1", b"\x01" * 8
    store.put_many({"u": g})
    assert store.get_many(["u"])["u"].cache == b""  # version 1: derived data not written
    g.apply(Ev("2", "b"))
    g.cache_key = "model@2"
    store.put_many({"u": g})
    back = store.get_many(["u"])["u"]
    assert (back.cache_key, back.cache) == ("model@2", b"\x01" * 8)
    assert encode(back, include_cache=False) == encode(g, include_cache=False)
    store.close()
