"""`ripple feed` on the real broker and a real Redis: the store ends equal to the topic's latest record per user,
through a `kill -9` of the feed and through Redis being down (nothing committed that Redis does not have)."""

from __future__ import annotations

import random
import time

import redis

from bench.feed_process import (
    FeedProcess,
    committed_offsets,
    create_topic,
    feed_env,
    health,
    produce,
    record,
    wait_committed,
)
from bench.worker_process import free_port, sigkill
from stream_app.core.records import UserEmbedding
from stream_app.kafka.feed import OnlineStore
from tests.integration.expectations import assert_store_equals, expected_store


def messages(
    seed: int, users: int, rounds: int, first_version: dict[str, int]
) -> list[tuple[str, UserEmbedding | None]]:
    """Per user increasing state_versions, with what a real topic also carries: a redelivered
    older version after a newer one, the same version twice, and deletions (some users come back at 1)."""
    rng = random.Random(seed)
    out: list[tuple[str, UserEmbedding | None]] = []
    for _ in range(rounds):
        for n in rng.sample(range(users), users):
            user = f"u{n}"
            v = first_version.get(user, 1)
            roll = rng.random()
            if roll < 0.03 and v > 1:
                out.append((user, None))  # ripple forget: tombstone, then the user starts again
                first_version[user] = 1
                continue
            out.append((user, record(user, v, seed=seed * 100_000 + n * 100 + v)))
            if roll < 0.10 and v > 2:
                out.append((user, record(user, v - 2, seed=seed * 100_000 + n * 100 + v - 2)))  # stale
            elif roll < 0.15:
                out.append((user, record(user, v, seed=seed * 100_000 + n * 100 + v)))  # redelivered
            first_version[user] = v + 1
    return out


def store_of(env: dict[str, str]) -> OnlineStore:
    return OnlineStore(redis.Redis.from_url(env["RIPPLE_REDIS_URL"]), env["RIPPLE_REDIS_KEY_PREFIX"])


def test_kill_9_of_the_feed_mid_run_then_restart_ends_equal_to_the_topic(broker, redis_server, unique, tmp_path):
    topic = f"emb-{unique}"
    create_topic(broker, topic)
    versions: dict[str, int] = {}
    first = messages(seed=1, users=200, rounds=20, first_version=versions)
    ends_first = produce(broker, topic, first)
    env = feed_env(broker, redis_server.url, unique, topic, feed_batch_size=10)
    group = env["RIPPLE_FEED_GROUP"]

    feed = FeedProcess(env, tmp_path / "feed-0.log").start()
    deadline = time.monotonic() + 90
    while feed.get("/metrics")[0] != 200 or feed.metric("ripple_feed_written_total") < 1000:
        assert feed.proc is not None and feed.proc.poll() is None, feed.log()
        assert time.monotonic() < deadline, f"the feed wrote under 1000 records in 90 s:\n{feed.log()}"
        time.sleep(0.05)
    assert sigkill(feed) == -9
    at_kill = committed_offsets(broker, group, topic)
    assert sum(at_kill.values()) < sum(ends_first.values()), f"the kill came after the whole backlog: {at_kill}"

    second = messages(seed=2, users=200, rounds=5, first_version=versions)  # arrives while no feed runs
    ends = produce(broker, topic, second)
    # Two feeds of the same group now share the partitions.
    feeds = [
        FeedProcess({**env, "RIPPLE_FEED_WEB_PORT": str(free_port())}, tmp_path / f"feed-{n}.log").start()
        for n in (1, 2)
    ]
    try:
        for f in feeds:
            f.wait_healthy(timeout=60)
        wait_committed(broker, group, topic, ends, timeout=120, feed=feeds[0])
        store = store_of(env)
        assert_store_equals(store, expected_store(first + second))
        store.close()
        written = sum(f.metric("ripple_feed_written_total") for f in feeds)
        stale = sum(f.metric("ripple_feed_skipped_stale_total") for f in feeds)
        assert written > 0 and stale > 0
    finally:
        for f in feeds:
            assert f.stop() == 0, f.log()
    print(f"committed at the kill: {sum(at_kill.values())} of the first {sum(ends_first.values())} records")


def test_redis_down_the_feed_waits_and_retries_committing_nothing_unwritten(broker, redis_server, unique, tmp_path):
    topic = f"emb-{unique}"
    create_topic(broker, topic)
    versions: dict[str, int] = {}
    first = messages(seed=3, users=100, rounds=5, first_version=versions)
    ends_first = produce(broker, topic, first)
    env = feed_env(broker, redis_server.url, unique, topic, feed_batch_size=50)
    group = env["RIPPLE_FEED_GROUP"]
    feed = FeedProcess(env, tmp_path / "feed.log").start()
    try:
        feed.wait_healthy(timeout=60)
        wait_committed(broker, group, topic, ends_first, timeout=60, feed=feed)
        store = store_of(env)
        assert_store_equals(store, expected_store(first))
        store.close()

        redis_server.kill()
        second = messages(seed=4, users=100, rounds=5, first_version=versions)
        ends = produce(broker, topic, second)
        deadline = time.monotonic() + 30
        while feed.metric("ripple_feed_redis_errors_total") < 2:
            assert time.monotonic() < deadline, f"the feed never noticed Redis was down:\n{feed.log()}"
            time.sleep(0.2)
        assert health(feed)[0] == 503
        assert feed.metric("ripple_feed_redis_up") == 0
        time.sleep(3)  # several retries, each with the whole batch
        assert feed.proc.poll() is None, feed.log()
        assert committed_offsets(broker, group, topic) == {p: ends_first.get(p, 0) for p in range(4)}, (
            "offsets were committed for records Redis never acknowledged"
        )
        assert feed.metric("ripple_feed_lag") > 0

        redis_server.start()  # same port and AOF directory: what it acknowledged is still there
        wait_committed(broker, group, topic, ends, timeout=60, feed=feed)
        store = store_of(env)
        assert_store_equals(store, expected_store(first + second))
        store.close()
        assert feed.metric("ripple_feed_redis_up") == 1
        assert health(feed)[0] == 200
    finally:
        assert feed.stop() == 0, feed.log()
    assert "unreachable" in feed.log() and "reachable again" in feed.log()
