"""TableStore keeps every user in its own partition's RocksDB and changelog, whatever the batch mixes.

These tests use Faust's real table and RocksDB store (no broker: the changelog
producer is replaced by a recorder of what the table would send).
"""

from __future__ import annotations

from types import SimpleNamespace

import faust
import pytest
from faust.streams import current_event
from faust.types import TP, Message

from graph_state import GraphConfig, UserGraph
from stream_app.kafka.table_store import E_META, E_UNROUTED, TableStore, acting_as
from tests.conftest import Ev

PARTITIONS = 4


def event(app: faust.App, partition: int, key: bytes | None, value: bytes = b"{}", offset: int = 0) -> faust.Event:
    message = Message(
        topic="events", partition=partition, offset=offset, timestamp=0.0, timestamp_type=0,
        headers=[], key=key, value=value, checksum=None,
    )  # fmt: skip
    return faust.Event(app, key, value, {}, message)


@pytest.fixture
def table(tmp_path):
    app = faust.App("table-store-test", store="rocksdb://", datadir=str(tmp_path), autodiscover=False)
    table = app.Table(
        "user-graphs", partitions=PARTITIONS, key_type=bytes, value_type=bytes,
        options={"driver": "rocksdict", "block_cache_size": 1 << 20, "write_buffer_size": 1 << 20},
    )  # fmt: skip
    sent: list[tuple[int | None, bytes, bytes | None]] = []

    def send_changelog(partition, key, value, key_serializer=None, value_serializer=None):
        sent.append((partition, key, value))
        return SimpleNamespace(message=SimpleNamespace(partition=partition))

    table.send_changelog = send_changelog  # type: ignore[method-assign]
    # Keys are listed for the partitions this worker actively owns: all of them here.
    owned = {TP(table.changelog_topic_name, p) for p in range(PARTITIONS)}
    app.assignor.assigned_actives = lambda: owned  # type: ignore[method-assign]
    table.sent = sent  # type: ignore[attr-defined]
    yield table
    for db in table.data._dbs.values():
        db.close()


def graph(n: int) -> UserGraph:
    g = UserGraph(GraphConfig())
    for i in range(n):
        g.apply(Ev(event_id=f"e{i}", item_id=f"i{i}"))
    return g


def local_keys(table, partition: int) -> set[bytes]:
    db = table.data._db_for_partition(partition)
    return {k for k in db.keys() if not k.startswith(b"__faust")}


def test_a_mixed_batch_writes_each_user_to_its_own_partition(table):
    app = table.app
    users = {f"u{n}": n % PARTITIONS for n in range(12)}
    batch = [event(app, p, uid.encode(), offset=i) for i, (uid, p) in enumerate(users.items())]
    store = TableStore(table, GraphConfig())
    # What Faust would do inside take_events(): the current event is the batch's last one.
    with acting_as(batch[-1]), store.routing(batch):
        store.put_many({uid: graph(2) for uid in users})
        assert current_event() is batch[-1]  # restored after each group
    for p in range(PARTITIONS):
        assert local_keys(table, p) == {uid.encode() for uid, q in users.items() if q == p}
    assert sorted((p, k) for p, k, _ in table.sent) == sorted((p, uid.encode()) for uid, p in users.items())


def test_without_routing_faust_puts_a_mixed_batch_into_the_last_events_partition(table):
    """The pitfall TableStore exists for (docs/architecture.md, pitfalls), shown on Faust's own store."""
    app = table.app
    batch = [event(app, p, f"v{p}".encode()) for p in range(PARTITIONS)]
    with acting_as(batch[-1]):
        for ev in batch:
            table[ev.message.key] = b"state"
    assert local_keys(table, PARTITIONS - 1) == {ev.message.key for ev in batch}
    assert {p for p, _, _ in table.sent} == {PARTITIONS - 1}


def test_reads_use_the_users_partition_and_find_users_outside_a_batch(table):
    app = table.app
    store = TableStore(table, GraphConfig())
    batch = [event(app, 1, b"alice"), event(app, 3, b"bob")]
    with store.routing(batch):
        store.put_many({"alice": graph(3), "bob": graph(1)})
    with store.routing(batch):
        found = store.get_many(["alice", "bob", "carol"])
    assert {u: g.state_version for u, g in found.items()} == {"alice": 3, "bob": 1}
    # Outside a batch (web views) Faust looks in every local partition.
    assert store.get_many(["bob"])["bob"].n_nodes == 1
    assert sorted(store.user_ids()) == ["alice", "bob"] and store.count() == 2
    # A batch routing alice to another partition does not see her partition-1 state.
    with store.routing([event(app, 2, b"alice")]):
        assert store.get_many(["alice"]) == {}


def test_keyless_messages_never_route_their_user(table):
    # The worker rejects them (missing_key); one that arrived on another partition than the
    # user's keyed events must not send the user's reads and writes to that partition.
    store = TableStore(table, GraphConfig())
    keyed = event(table.app, 1, b"dora", b'{"user_id": "dora"}')
    stray = event(table.app, 2, None, b'{"user_id": "dora", "item_id": "x"}')
    with store.routing([keyed, stray]):
        assert store.partition_of("dora") == 1
        store.put_many({"dora": graph(1)})
    assert local_keys(table, 1) == {b"dora"} and local_keys(table, 2) == set()
    with store.routing([stray]):
        assert store.partition_of("dora") is None
        with pytest.raises(RuntimeError, match="routing"):
            store.put_many({"dora": graph(2)})


def test_writing_an_unrouted_user_or_meta_is_refused(table):
    store = TableStore(table, GraphConfig())
    with pytest.raises(RuntimeError, match="routing") as err:
        store.put_many({"zed": graph(1)})
    assert str(err.value) == E_UNROUTED.format(user="zed")
    with store.routing([event(table.app, 0, b"zed")]), pytest.raises(ValueError) as err2:
        store.put_many({"zed": graph(1)}, meta={"offset": b"1"})
    assert str(err2.value) == E_META


def test_delete_sends_a_tombstone_to_the_users_partition(table):
    store = TableStore(table, GraphConfig())
    batch = [event(table.app, 3, b"erin")]
    with store.routing(batch):
        store.put_many({"erin": graph(1)})
        assert store.delete("erin") is True
        assert store.delete("erin") is False
    assert local_keys(table, 3) == set()
    assert table.sent[-1] == (3, b"erin", None)


def test_delete_inside_a_mixed_batch_goes_to_the_users_partition_and_is_idempotent(table):
    app = table.app
    store = TableStore(table, GraphConfig())
    batch = [event(app, 1, b"fay"), event(app, 2, b"gus"), event(app, 0, b"hal")]
    with store.routing(batch):
        store.put_many({"fay": graph(2), "gus": graph(1)})
    table.sent.clear()
    # Faust's current event is the batch's last one (partition 0); each tombstone still goes to its user's partition.
    with acting_as(batch[-1]), store.routing(batch):
        assert store.delete("fay") is True
        assert store.delete("hal") is False  # no state: the tombstone is sent all the same
        assert store.delete("fay") is False  # a redelivered request
    assert table.sent == [(1, b"fay", None), (0, b"hal", None), (1, b"fay", None)]
    assert local_keys(table, 1) == set() and local_keys(table, 2) == {b"gus"}
    assert store.get_many(["fay", "gus"]).keys() == {"gus"}
    with pytest.raises(RuntimeError, match="routing"):
        store.delete("ivy")  # not routed: refused like a write
