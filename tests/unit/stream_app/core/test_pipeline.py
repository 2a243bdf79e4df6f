"""The docs/architecture.md invariants on the pipeline: streaming equals batch, idempotent replay, bad input."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_state import GraphConfig, MemoryStore, UserGraph
from operators import Checkpoint, Embedder, EncoderConfig
from stream_app import Pipeline, RawRecord
from stream_app.core.pipeline import APPLIED, DUPLICATE, REJECTED
from tests.conftest import random_stream, to_json

EMBEDDER = Embedder(Checkpoint.seeded(EncoderConfig(dim=16), seed=11))


def run(records: list[RawRecord], batch_size: int, max_nodes: int = 6) -> tuple[dict[str, list[float]], Pipeline]:
    pipeline = Pipeline(MemoryStore(GraphConfig(max_nodes=max_nodes)), EMBEDDER)
    latest: dict[str, list[float]] = {}
    for start in range(0, len(records), batch_size):
        result = pipeline.process(records[start : start + batch_size])
        pipeline.commit(result)
        for emb in result.embeddings:
            latest[emb.user_id] = emb.embedding
    return latest, pipeline


def from_scratch(events, max_nodes: int = 6) -> dict[str, np.ndarray]:
    graphs: dict[str, UserGraph] = {}
    for ev in events:
        graphs.setdefault(ev.user_id, UserGraph(GraphConfig(max_nodes=max_nodes))).apply(ev)
    return {uid: EMBEDDER.embed_one(g) for uid, g in graphs.items()}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 150), batch_size=st.integers(1, 64), users=st.integers(1, 8))
def test_streaming_equals_batch(seed, n, batch_size, users):
    events = random_stream(seed, n, n_users=users)
    latest, _ = run([RawRecord(to_json(ev)) for ev in events], batch_size)
    expected = from_scratch(events)
    assert set(latest) == set(expected)
    for uid, vec in expected.items():
        np.testing.assert_allclose(latest[uid], vec, atol=1e-5)


def test_every_published_vector_equals_the_prefix_embedding():
    events = random_stream(7, 60, n_users=3)
    pipeline = Pipeline(MemoryStore(GraphConfig(max_nodes=6)), EMBEDDER)
    for n, ev in enumerate(events):
        result = pipeline.process([RawRecord(to_json(ev))])
        pipeline.commit(result)
        (emb,) = result.embeddings
        prefix = [e for e in events[: n + 1] if e.user_id == ev.user_id]
        np.testing.assert_allclose(emb.embedding, from_scratch(prefix)[ev.user_id], atol=1e-5)
        assert emb.state_version == len(prefix) and emb.last_event_id == ev.event_id


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), batch_size=st.integers(1, 40))
def test_duplicates_anywhere_later_change_nothing(seed, batch_size):
    events = random_stream(seed, 80, n_users=4)
    records = [RawRecord(to_json(ev)) for ev in events]
    rng = random.Random(seed)
    with_dupes = list(records)
    for rec in records:
        with_dupes.insert(rng.randint(with_dupes.index(rec) + 1, len(with_dupes)), rec)
    clean, p1 = run(records, batch_size)
    dup, p2 = run(with_dupes, batch_size)
    assert clean.keys() == dup.keys()
    for uid in clean:
        np.testing.assert_allclose(clean[uid], dup[uid], atol=1e-6)  # batch composition moves the last ulp
    g1 = p1.store.get_many(clean)
    g2 = p2.store.get_many(clean)
    assert all(g1[u].state_version == g2[u].state_version == sum(e.user_id == u for e in events) for u in clean)


def test_redelivered_last_event_republishes_the_same_state():
    events = random_stream(3, 10, n_users=1)
    pipeline = Pipeline(MemoryStore(GraphConfig()), EMBEDDER)
    first = pipeline.process([RawRecord(to_json(ev)) for ev in events])
    pipeline.commit(first)
    again = pipeline.process([RawRecord(to_json(ev)) for ev in events[-3:]])
    assert again.outcomes == {DUPLICATE: 3} and not again.graphs
    (emb,) = again.embeddings
    assert emb.state_version == first.embeddings[0].state_version
    assert emb.embedding == first.embeddings[0].embedding
    older = pipeline.process([RawRecord(to_json(events[0]))])
    assert older.embeddings == []


def test_bad_input_is_dead_lettered_and_good_input_around_it_is_applied():
    events = random_stream(5, 20, n_users=2)
    bad = [b"{oops", b'{"event_id": 1}', b"\xff", b"[]", b"{}" + b" " * 70_000]
    records = []
    for n, ev in enumerate(events):
        records.append(RawRecord(to_json(ev), offset=2 * n))
        records.append(RawRecord(bad[n % len(bad)], source="t", partition=3, offset=2 * n + 1))
    latest, pipeline = run(records, 7)
    expected = from_scratch(events)
    for uid, vec in expected.items():
        np.testing.assert_allclose(latest[uid], vec, atol=1e-5)
    result = pipeline.process(records[:10])
    assert result.outcomes[REJECTED] == 5 and result.outcomes[DUPLICATE] == 5 and result.outcomes[APPLIED] == 0
    dl = result.dead_letters[0]
    assert dl.raw() == bad[0] and dl.partition == 3 and dl.offset == 1 and dl.reason == "malformed_json"


def test_model_action_vocabulary_must_match_settings():
    import pytest

    with pytest.raises(ValueError, match="RIPPLE_ACTIONS"):
        Pipeline(MemoryStore(GraphConfig(actions=("view", "other"))), EMBEDDER)


def test_late_events_are_dead_lettered_and_change_nothing():
    from tests.conftest import Ev

    store = MemoryStore(GraphConfig(max_lateness_s=60.0))
    pipeline = Pipeline(store, EMBEDDER)
    events = [Ev("e1", "a", ts=1_767_225_600.0 + 100, user_id="u"), Ev("e2", "b", ts=1_767_225_600.0, user_id="u")]
    result = pipeline.process([RawRecord(to_json(ev), partition=1, offset=n) for n, ev in enumerate(events)])
    pipeline.commit(result)
    assert result.rejected == {"late_event": 1} and result.outcomes == {APPLIED: 1, REJECTED: 1}
    (dead,) = result.dead_letters
    assert dead.offset == 1 and "RIPPLE_MAX_LATENESS_S" in dead.detail
    (emb,) = result.embeddings
    assert emb.state_version == 1 and emb.last_event_id == "e1"


class Collected:
    """A Sink that keeps what it was given (the file runner writes files, the worker sends to Kafka)."""

    def __init__(self) -> None:
        self.published: list = []

    def publish(self, result) -> None:
        self.published.extend(result.embeddings)


class Broken:
    def publish(self, result) -> None:
        raise ConnectionError("the output went away")


def test_a_batch_whose_publish_fails_stores_nothing_and_its_redelivery_publishes_as_if_it_never_ran():
    """The failure clean-up of Pipeline.run, the same for both runners: cached graphs are dropped, nothing stored."""
    import pytest

    from graph_state import CachedStore

    events = random_stream(9, 40, n_users=3)
    records = [RawRecord(to_json(ev)) for ev in events]
    reference = Collected()
    ref = Pipeline(MemoryStore(GraphConfig(max_nodes=6)), EMBEDDER)
    for start in (0, 20):
        ref.run(records[start : start + 20], reference)

    store = CachedStore(MemoryStore(GraphConfig(max_nodes=6)), 16)
    pipeline = Pipeline(store, EMBEDDER)
    out = Collected()
    pipeline.run(records[:20], out)
    users = sorted({ev.user_id for ev in events})
    before = {uid: g.state_version for uid, g in store.inner.get_many(users).items()}
    with pytest.raises(ConnectionError):
        pipeline.run(records[20:], Broken())
    assert len(store) == 0  # the graphs the failed batch changed in place are gone from the cache
    assert {uid: g.state_version for uid, g in store.get_many(users).items()} == before
    pipeline.run(records[20:], out)
    assert [(e.user_id, e.state_version) for e in out.published] == [
        (e.user_id, e.state_version) for e in reference.published
    ]
    for got, want in zip(out.published, reference.published, strict=True):
        np.testing.assert_allclose(got.embedding, want.embedding, atol=1e-5)
