"""The online store's write rule on a real Redis: ordered by state_version, atomic, tombstones delete."""

from __future__ import annotations

import threading

import msgspec
import numpy as np
import pytest
import redis

from bench.feed_process import record
from stream_app.core.records import Recommended
from stream_app.kafka.feed import OnlineStore


@pytest.fixture
def store(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    s = OnlineStore(client, "t:")
    yield s
    s.close()


def test_a_record_round_trips_with_its_vector_versions_and_recommendations(store):
    emb = record("u1", 3, seed=1, dim=64)
    emb = msgspec.structs.replace(emb, recommendations=[Recommended("i9", 2.5)])
    counts = store.write_many([("u1", emb)])
    assert (counts.written, counts.skipped, counts.deleted) == (1, 0, 0)
    got = store.get("u1")
    assert got is not None
    np.testing.assert_array_equal(got.embedding, np.float32(emb.embedding))
    assert got.embedding.dtype == np.float32 and got.embedding.shape == (64,)
    assert (got.model_version, got.state_version, got.event_ts, got.computed_at, got.last_event_id) == (
        "m1", 3, emb.event_ts, emb.computed_at, "u1-e3"
    )  # fmt: skip
    assert got.recommendations == [{"item_id": "i9", "score": 2.5}]
    # A newer record without recommendations replaces the whole hash: no field of the old one survives.
    store.write_many([("u1", record("u1", 4, seed=2, dim=64))])
    assert store.get("u1").recommendations is None


def test_a_stale_record_never_overwrites_a_newer_one(store):
    newer, older = record("u1", 7, seed=1), record("u1", 5, seed=2)
    assert store.write_many([("u1", newer)]).written == 1
    counts = store.write_many([("u1", older)])
    assert (counts.written, counts.skipped) == (0, 1)
    got = store.get("u1")
    assert got.state_version == 7
    np.testing.assert_array_equal(got.embedding, np.float32(newer.embedding))
    # Within one round trip too, and the same version again (a redelivery) is written again, harmlessly.
    counts = store.write_many([("u1", record("u1", 9, seed=3)), ("u1", record("u1", 8, seed=4)), ("u1", older)])
    assert (counts.written, counts.skipped) == (1, 2)
    assert store.write_many([("u1", record("u1", 9, seed=3))]).written == 1
    assert store.get("u1").state_version == 9


def test_a_tombstone_deletes_and_the_user_starts_again(store):
    store.write_many([("u1", record("u1", 4, seed=1)), ("u2", record("u2", 2, seed=2))])
    counts = store.write_many([("u1", None), ("never-seen", None)])
    assert counts.deleted == 2
    assert store.get("u1") is None and store.get("never-seen") is None
    assert store.get("u2").state_version == 2
    # Events after the deletion start a new graph at state_version 1: written, not "stale".
    assert store.write_many([("u1", record("u1", 1, seed=5))]).written == 1
    assert store.get("u1").state_version == 1


def test_concurrent_writers_of_one_user_leave_the_highest_version(store, redis_server):
    """Two feeds racing on the same user (a rebalance): the compare and the write are one atomic script."""
    versions = list(range(1, 201))
    stores = [OnlineStore(redis.Redis.from_url(redis_server.url), "t:") for _ in range(2)]

    def write(s: OnlineStore, vs: list[int]) -> None:
        for v in vs:
            s.write_many([("racy", record("racy", v, seed=v))])

    threads = [
        threading.Thread(target=write, args=(stores[0], versions[::-1])),
        threading.Thread(target=write, args=(stores[1], versions)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    got = store.get("racy")
    assert got.state_version == 200
    np.testing.assert_array_equal(got.embedding, np.float32(record("racy", 200, seed=200).embedding))
