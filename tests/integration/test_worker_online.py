"""The real-time feature feed end to end: a worker serving a model with items (RIPPLE_RECOMMEND_TOP=5) →
the embeddings topic → `ripple feed` → Redis, and the worker's recommendations view.

One module fixture runs everything once: a real redis-server, the worker, the feed, and the
events produced through Kafka; the tests check what that run left behind.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import pytest
import redis
import torch
from typer.testing import CliRunner

from bench.feed_process import FeedProcess, feed_env, store_content, wait_committed
from bench.redis_server import E_NO_REDIS, RedisServer, redis_binary
from bench.worker_process import TopicReader, WorkerProcess, latest_by_user, reached, worker_env
from operators.checkpoint import Checkpoint
from operators.encoder import EncoderConfig
from operators.offline.datasets import Case
from operators.offline.evaluation import GraphScorer, rank_of_targets
from operators.recommend import ItemRanker, exclude_items
from stream_app.cli import app as cli_app
from stream_app.core.records import UserEmbedding
from stream_app.core.settings import Settings
from stream_app.files.file_runner import replay
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.files.histories import read_histories
from stream_app.kafka.feed import OnlineStore
from stream_app.kafka.produce import produce_events
from tests.conftest import write_jsonl

TOP = 5


@dataclass
class Online:
    env: dict[str, str]
    model: Path
    histories: dict
    published: list[UserEmbedding]
    store: dict[str, dict]
    latest: dict[str, UserEmbedding]
    views: dict[tuple[str, str], tuple[int, dict]]
    lookup: str
    feed_metrics: dict[str, float]
    view_users: list[str]


@pytest.fixture(scope="module")
def online(tmp_path_factory, broker) -> Online:
    if redis_binary() is None:
        pytest.fail(E_NO_REDIS)
    name = uuid.uuid4().hex[:10]
    tmp = tmp_path_factory.mktemp("online")
    lines = list(generate_events(GeneratorSpec(users=40, items=100, events=1200, seed=5)))
    events_path = write_jsonl(tmp / "events.jsonl", lines)
    histories, _ = read_histories(events_path, "jsonl", Settings.from_env({}))
    vocab = sorted({ev.item_id for events in histories.values() for ev in events})
    # "Seen" is the user's window (50 distinct items) when serving, the whole history in evaluate: users
    # whose history fits the window compare like for like.
    view_users = [u for u in sorted(histories) if len({ev.item_id for ev in histories[u]}) <= 50][:5]
    assert len(view_users) == 5
    model = tmp / "model.ckpt"
    Checkpoint.seeded(EncoderConfig(dim=32, norm_scale=10.0), seed=2, vocab=vocab).save(model)
    # The file runner with the same model and settings: what the worker must publish.
    file_settings = Settings.from_env({}, state_dir=str(tmp / "file-state"), model_path=str(model), recommend_top=TOP)
    replay(events_path, "jsonl", str(tmp / "file.out"), file_settings, progress=False)
    with open(tmp / "file.out", "rb") as f:
        expected = latest_by_user([msgspec.json.decode(line, type=UserEmbedding) for line in f])

    redis_server = RedisServer(tmp / "redis").start()
    env = worker_env(broker, name, tmp / "state", model_path=model, recommend_top=TOP)
    settings = Settings.from_env(env)
    fenv = feed_env(broker, redis_server.url, name, settings.output_topic)
    produce_events(events_path, "jsonl", settings, progress=False)
    worker = WorkerProcess(env, tmp / "worker.log").start()
    feed = FeedProcess(fenv, tmp / "feed.log").start()
    out = TopicReader(broker, settings.output_topic)
    try:
        worker.wait_healthy()
        feed.wait_healthy()
        out.until(reached(expected), timeout=90, what="every user's final embedding")
        out.poll(0.5)
        ends: dict[int, int] = {}
        for m in out.messages:
            ends[m.partition] = max(ends.get(m.partition, 0), m.offset + 1)
        wait_committed(broker, fenv["RIPPLE_FEED_GROUP"], settings.output_topic, ends, timeout=60, feed=feed)
        views = {}
        for uid in [*view_users, "nobody-knows-me"]:
            for query in ("k=10", "k=10&exclude_seen=1", "k=0", "k=3&exclude_seen=perhaps"):
                status, body = worker.get(f"/users/{uid}/recommendations?{query}")
                views[(uid, query)] = (status, json.loads(body) if body else {})
        client = redis.Redis.from_url(redis_server.url)
        store = store_content(OnlineStore(client, fenv["RIPPLE_REDIS_KEY_PREFIX"]))
        client.close()
        lookup = CliRunner().invoke(cli_app, ["lookup", "u3"], env=fenv)
        assert lookup.exit_code == 0, lookup.output
        # The lag gauge is refreshed every couple of seconds: wait for the report after the last write.
        deadline = time.monotonic() + 30
        while feed.metric("ripple_feed_lag") != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        feed_metrics = {
            name: feed.metric(name)
            for name in ("ripple_feed_written_total", "ripple_feed_skipped_stale_total", "ripple_feed_lag")
        }
    finally:
        out.close()
        codes = (worker.stop(), feed.stop())
        redis_server.stop()
    assert codes == (0, 0), worker.log() + feed.log()
    published = out.embeddings()
    return Online(
        env,
        model,
        histories,
        published,
        store,
        latest_by_user(published),
        views,
        lookup.stdout,
        feed_metrics,
        view_users,
    )


def test_every_published_record_carries_the_models_top_items(online):
    ranker = ItemRanker(Checkpoint.load(online.model))
    for emb in online.published:
        assert emb.recommendations is not None and len(emb.recommendations) == TOP
        (want,) = ranker.top(np.asarray([emb.embedding], np.float32), k=TOP)
        assert [r.item_id for r in emb.recommendations] == [item for item, _ in want]
        np.testing.assert_allclose([r.score for r in emb.recommendations], [s for _, s in want], rtol=1e-5)


def test_the_recommendations_view_ranks_as_ripple_evaluate(online):
    scorer = GraphScorer(Checkpoint.load(online.model))
    for uid in online.view_users:
        case = Case(uid, online.histories[uid], target="")
        for query, exclude in (("k=10", False), ("k=10&exclude_seen=1", True)):
            status, body = online.views[(uid, query)]
            assert status == 200, body
            assert (body["user_id"], body["k"], body["exclude_seen"]) == (uid, 10, exclude)
            assert body["state_version"] == online.latest[uid].state_version
            scores = scorer.scores([case])
            if exclude:
                scores = exclude_items(scores, scorer.index, [[ev.item_id for ev in case.history]])
            rows = torch.tensor([scorer.index.row(item["item_id"]) for item in body["items"]])
            assert rank_of_targets(scores.expand(len(rows), -1), rows).tolist() == list(range(1, 11)), (uid, query)
            np.testing.assert_allclose([i["score"] for i in body["items"]], scores[0, rows].numpy(), atol=1e-4)


def test_the_recommendations_view_rejects_bad_requests_and_unknown_users(online):
    user = online.view_users[0]
    assert online.views[(user, "k=0")][0] == 400 and "k must be" in online.views[(user, "k=0")][1]["error"]
    assert online.views[(user, "k=3&exclude_seen=perhaps")][0] == 400
    assert online.views[("nobody-knows-me", "k=10")][0] == 404


def test_redis_holds_the_topics_latest_record_of_every_user(online):
    assert online.store.keys() == online.latest.keys()
    for uid, want in online.latest.items():
        got = online.store[uid]
        assert (got["state_version"], got["model_version"], got["event_ts"]) == (
            want.state_version,
            want.model_version,
            want.event_ts,
        )
        np.testing.assert_array_equal(np.float32(got["embedding"]), np.float32(want.embedding))
        assert got["recommendations"] == [{"item_id": r.item_id, "score": r.score} for r in want.recommendations]
    looked_up = json.loads(online.lookup.splitlines()[0])
    assert looked_up["user_id"] == "u3" and looked_up["state_version"] == online.latest["u3"].state_version
    assert online.feed_metrics["ripple_feed_written_total"] >= len(online.latest)
    assert online.feed_metrics["ripple_feed_lag"] == 0
