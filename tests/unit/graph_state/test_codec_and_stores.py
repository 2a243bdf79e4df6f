from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_state import CODEC_VERSION, GraphConfig, MemoryStore, RocksStore, UserGraph, decode, encode, encode_stored
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
    # What a store writes: the cache at versions that are multiples of its setting only.
    assert encode_stored(g, 0) == encode(g, include_cache=False)
    assert encode_stored(g, 1) == encode(g)
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
        mine, theirs = getattr(back, name), getattr(g, name)
        if isinstance(theirs, np.ndarray):  # node columns: same values and the same dtype
            assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs), name
        else:
            assert mine == theirs, name
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


def test_codec_encodes_the_current_item_ids_after_every_change():
    cfg = GraphConfig(max_nodes=3)
    g = UserGraph(cfg)
    for n, item in enumerate(["a", "b", "a"]):
        g.apply(Ev(f"e{n}", item, "view", BASE_TS + n))
    seen = [decode(encode(g), cfg).item_ids]  # encoding keeps the encoded ids with the graph
    for n, item in enumerate(["c", "b", "d", "e"], start=3):  # a new slot, a repeat, then two evictions
        g.apply(Ev(f"e{n}", item, "view", BASE_TS + n))
        seen.append(decode(encode(g), cfg).item_ids)
    assert seen == [["a", "b"], ["a", "b", "c"], ["a", "b", "c"], ["d", "b", "c"], ["d", "b", "e"]]


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


_CRASH_AFTER_WRITES = """
import os, sys
from graph_state import GraphConfig, RocksOptions, RocksStore, UserGraph
from tests.conftest import Ev

# Tails for any graph size: what survives the crash must be a record plus the tail written with it.
store = RocksStore(sys.argv[1], GraphConfig(), RocksOptions(wal=sys.argv[2] == "wal", tail_min_nodes=0))
g = UserGraph(GraphConfig())
for n in range(1, 5):
    g.apply(Ev(str(n), f"i{n}"))
    store.put_many({"u": g}, meta={"progress": str(n).encode()})
    if n == 2:
        store._db.flush()  # what RocksDB does when a memtable fills
os._exit(0)  # no close: a crash
"""


@pytest.mark.parametrize("wal", [True, False])
def test_rocks_store_crash_rolls_state_and_progress_back_together(tmp_path, wal):
    """Without the WAL a crash loses the batches after the last memtable flush — state and
    progress alike, so a resumed run re-reads exactly those events; with it, nothing is lost."""
    from graph_state import RocksOptions

    db = tmp_path / "db"
    root = Path(__file__).parents[3]
    subprocess.run(
        [sys.executable, "-c", _CRASH_AFTER_WRITES, str(db), "wal" if wal else "nowal"],
        check=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    store = RocksStore(db, GraphConfig(), RocksOptions(tail_min_nodes=0))
    progress = int(store.get_meta("progress") or b"0")
    graph = store.get_many(["u"])["u"]
    store.close()
    assert progress == (4 if wal else 2)
    assert graph.state_version == progress  # the graph is the one written with that progress
    with pytest.raises(ValueError, match="RIPPLE_ROCKSDB_WAL=true"):
        RocksStore(tmp_path / "other", GraphConfig(), RocksOptions(wal=False, sync_writes=True))


V1_RECORDS = Path(__file__).parents[2] / "data" / "graph_codec_v1.msgpack"
"""Graphs written by the version-1 codec (Ripple before the columnar state), with the events
that built them: frozen test data, written by that release's ``graph_state.encode``."""


def _v1_cases():
    return msgspec.msgpack.decode(V1_RECORDS.read_bytes())


def test_codec_reads_version_1_and_continues_it_as_version_2():
    cfg = GraphConfig(max_nodes=6, dedupe_ring=8)
    for case in _v1_cases():
        record = case["record"]
        assert record[0] == 1
        old = decode(record, cfg)
        events = [Ev(**e) for e in case["events"]]
        fresh = UserGraph(cfg)
        for ev in events:
            fresh.apply(ev)
        # The v1 record is the same graph as one built from its events today.
        assert (old.state_version, old.last_slot, old.last_ts, old.last_event_id) == (
            fresh.state_version,
            fresh.last_slot,
            fresh.last_ts,
            fresh.last_event_id,
        )
        assert old.item_ids == fresh.item_ids and old.ring == fresh.ring and old.ring_pos == fresh.ring_pos
        for name in ("counts", "last_seen", "last_seq", "last_action", "action_mask", "weight_sum"):
            assert np.array_equal(getattr(old, name), getattr(fresh, name)), name
        assert sorted(old.edges()) == sorted(fresh.edges())  # v1 grouped edges by source
        assert old.cache == bytes(range(16)) and old.cache_key.startswith("m-test@")
        assert all(old.seen(e.event_id) for e in events[-cfg.dedupe_ring :])
        # Continued: duplicates are recognised, new events apply exactly as on the fresh graph.
        assert old.apply(events[-1]).duplicate
        ts = events[-1].ts
        for n, item in enumerate(["i0", "new-a", "i1", "new-b", "new-a", "i2", "new-c"]):
            ev = Ev(f"{case['user']}-more-{n}", item, "cart" if n % 2 else "view", ts + 60 * (n + 1))
            assert old.apply(ev) == fresh.apply(ev)
        assert sorted(old.edges()) == sorted(fresh.edges())
        written = encode(old)
        assert written[0] == CODEC_VERSION == 2
        again = decode(written, cfg)
        assert encode(again) == written and again.state_version == fresh.state_version


def test_codec_v2_decodes_without_copying_and_copies_on_first_write():
    cfg = GraphConfig()
    g = UserGraph(cfg)
    for n in range(5):
        g.apply(Ev(f"e{n}", f"i{n % 3}", "view", BASE_TS + n))
    raw = encode(g)
    back = decode(raw, cfg)
    assert not back.counts.flags.writeable  # a view of the record's bytes
    back.apply(Ev("e9", "i7", "view", BASE_TS + 9))
    assert back.counts.flags.writeable and decode(raw, cfg).n_nodes == g.n_nodes == back.n_nodes - 1


def test_codec_v2_rejects_truncated_and_inconsistent_records():
    cfg = GraphConfig()
    g = UserGraph(cfg)
    for n in range(4):
        g.apply(Ev(f"e{n}", f"i{n}", "view", BASE_TS + n))
    raw = encode(g)
    for bad in (raw[:-3], raw + b"x", raw[:3]):
        with pytest.raises(ValueError, match="corrupt"):
            decode(bad, cfg)
    # An edge endpoint outside the nodes, negative or too large, in either column.
    edges_at = len(raw) - g.edge_block().nbytes - len(g.ring) * 8
    for row, slot in ((0, -1), (1, -(2**40)), (0, 4), (1, 2**40)):
        block = g.edge_block().copy()
        block[row, 0] = slot
        bad = raw[:edges_at] + block.tobytes() + raw[edges_at + block.nbytes :]
        with pytest.raises(ValueError, match="an edge points outside the graph's nodes"):
            decode(bad, cfg)
    assert (
        encode(decode(raw[:edges_at] + g.edge_block().tobytes() + raw[edges_at + g.edge_block().nbytes :], cfg)) == raw
    )


def test_rocks_store_reads_what_another_compression_wrote_and_rejects_unknown_ones(tmp_path):
    from graph_state import RocksOptions

    cfg = GraphConfig()
    g = UserGraph(cfg)
    g.apply(Ev("1", "a"))
    first = RocksStore(tmp_path / "db", cfg, RocksOptions(compression="snappy"))
    first.put_many({"u": g})
    first._db.flush()
    first.close()
    again = RocksStore(tmp_path / "db", cfg, RocksOptions(compression="lz4"))
    assert encode(again.get_many(["u"])["u"]) == encode(g)
    again.close()
    with pytest.raises(ValueError, match="RIPPLE_ROCKSDB_COMPRESSION"):
        RocksStore(tmp_path / "other", cfg, RocksOptions(compression="brotli"))
