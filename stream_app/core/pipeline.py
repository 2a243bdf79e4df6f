"""The processing pipeline shared by the Faust agent and the file runner.

For one micro-batch (:meth:`Pipeline.run`, or :meth:`Pipeline.run_async` for the worker),
in this order:

1. decode and validate every message; invalid ones become dead letters;
2. load the graphs of all users in the batch, apply their events in arrival order;
3. run one batched forward for every user whose graph changed (steps 1-3: :meth:`Pipeline.process`);
4. the runner's :class:`Sink` publishes the embeddings and dead letters and returns once they left;
5. :meth:`Pipeline.commit` stores the new state, only after its output left;
6. the latency and published counters are observed.

The file runner with a forward process (``operators.ForwardProcess``) runs the same steps through
:meth:`Pipeline.stage` (1-3, the full forward handed to the process, the state encoded) and
:meth:`Pipeline.finish` (the vectors collected, 4-6), staging batches k+1 and k+2 before finishing batch k.

A failure anywhere in 1-5 drops the cached graphs (the batch changed them in place) and
propagates: nothing of the batch is stored, and the runner redelivers it. Deleting users
(:meth:`Pipeline.forget`) goes through the same store and cache.

A user whose events in the batch were all duplicates is republished only when
one of them is the user's latest applied event: that is a redelivery after a
crash between commit and publish, and publishing the same (user_id,
state_version) again closes the gap without ever publishing a different vector.
Such a graph is also stored again (:attr:`BatchResult.restore`): a crash can keep
a graph in the local store whose changelog record never left the process (the
Faust table writes RocksDB first and sends the changelog record afterwards), and
storing it again puts it back in the changelog before the redelivered offsets
are committed — otherwise a table rebuilt from the changelog would miss events.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple, Protocol

import numpy as np
import orjson

from graph_state import CachedStore, GraphStore, UserGraph, apply_events
from operators import Checkpoint, Embedder, ForwardProcess, UserDelta
from operators.explain import explain
from operators.heads import LabelHead
from operators.incremental import Deferred
from stream_app.core.events import LATE_EVENT, BehaviorEvent, EventLimits, Rejection, decode_event
from stream_app.core.metrics import Metrics
from stream_app.core.recommend import Recommender
from stream_app.core.records import DeadLetter, Explained, RawRecord, Recommended, UserEmbedding

APPLIED = "applied"
DUPLICATE = "duplicate"
REJECTED = "rejected"
E_ACTIONS = (
    "the model was trained with actions {model} but the settings define {settings}; "
    "set RIPPLE_ACTIONS to the model's actions or retrain the model."
)
W_HEAD_STALE = (
    "label head %s was trained on encoder %s, not on the swapped-in model %s: embeddings carry no head_score "
    "until the worker restarts with a head trained on it (ripple train-head --model <new checkpoint>)"
)
log = logging.getLogger("ripple.pipeline")


@dataclass
class BatchResult:
    """What one micro-batch produced; ``graphs`` are the changed, not yet stored, states."""

    embeddings: list[UserEmbedding] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    graphs: dict[str, UserGraph] = field(default_factory=dict)
    restore: dict[str, UserGraph] = field(default_factory=dict)
    """Unchanged graphs republished for a redelivered latest event: stored again (see module docstring)."""
    outcomes: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    unknown_actions: int = 0
    new_users: int = 0
    earliest_ts: dict[str, float] = field(default_factory=dict)
    """Per published user: the earliest record timestamp behind its update (latency)."""
    encoded: object = None
    """The batch's embeddings as the forward process's ``post`` made them for the sink (the file
    runner's: its JSON lines, or where that process appended them to the file; :meth:`Pipeline.stage`);
    ``embeddings`` is then empty."""
    encoded_users: list[str] = field(default_factory=list)
    """With ``encoded``: the users it publishes, in its order."""

    @property
    def published_users(self) -> list[str]:
        """The users this batch publishes, in order, whichever form its embeddings took."""
        return self.encoded_users if self.encoded is not None else [e.user_id for e in self.embeddings]


def _to_store(result: BatchResult) -> dict[str, UserGraph]:
    """The graphs a batch stores: the changed ones, and the republished ones again."""
    return {**result.restore, **result.graphs} if result.restore else result.graphs


class Published(NamedTuple):
    """Published users' states at the end of their batch, as columns: what their output records say
    (columns: the forward process gets them with each batch, and lists pickle fast)."""

    user_ids: list[str]
    state_versions: list[int]
    last_event_ids: list[str]
    event_ts: list[float]
    n_nodes: list[int]

    @classmethod
    def of(cls, graphs: Mapping[str, UserGraph]) -> Published:
        values = graphs.values()
        return cls(
            list(graphs),
            [g.state_version for g in values],
            [g.last_event_id for g in values],
            [g.last_ts for g in values],
            [g.n_nodes for g in values],
        )


class OutputRecords:
    """A batch's vectors as its published records: the serving model's version and its label head's
    score (a head scores only vectors of the encoder it was trained on). :meth:`Pipeline.stage`'s
    forward process makes them with its copy of this (see ``stream_app.files.file_runner``)."""

    def __init__(self, checkpoint: Checkpoint, head: LabelHead | None) -> None:
        self.model_version = checkpoint.model_version
        matches = head is not None and head.encoder_version == checkpoint.encoder_version
        self.head = head if matches else None
        self.head_version = self.head.head_version if self.head is not None else None

    def make(
        self,
        published: Published,
        vectors: np.ndarray,
        explanations: Sequence[list[Explained] | None] | None = None,
        recommended: Sequence[list[Recommended] | None] | None = None,
    ) -> list[UserEmbedding]:
        now = time.time()
        n = len(published.user_ids)
        head = self.head
        scores: list[float | None] = head.score_many(vectors).tolist() if head is not None else [None] * n
        model_version, head_version = self.model_version, self.head_version
        return [
            UserEmbedding(
                user_id=user_id,
                embedding=vec,
                model_version=model_version,
                state_version=state_version,
                last_event_id=last_event_id,
                event_ts=event_ts,
                computed_at=now,
                n_nodes=n_nodes,
                head_score=score,
                head_version=head_version,
                explanation=why,
                recommendations=recs,
            )
            for user_id, state_version, last_event_id, event_ts, n_nodes, vec, score, why, recs in zip(
                *published,
                vectors.tolist(),
                scores,
                explanations or [None] * n,
                recommended or [None] * n,
                strict=True,
            )
        ]

    def json_lines(self, published: Published, vectors: np.ndarray) -> bytes | None:
        """The JSON lines of :meth:`make`'s records (``exports.jsonl_lines``), the same bytes (``computed_at``
        aside), made by orjson from the vectors' rows without a Python float each: 45 % less time than
        msgspec over ``tolist()`` (the forward process's output, ``file_runner.OutputLines``). ``None``
        where the two could differ: a label head's fields, a number orjson writes with an exponent sign
        (from 1e16) or NaN, a string neither can encode; the caller then takes :meth:`make`."""
        if self.head is not None or not bool((np.abs(vectors) < NUMBER_LIMIT).all()):
            return None
        if not all(-NUMBER_LIMIT < ts < NUMBER_LIMIT for ts in published.event_ts):
            return None
        now, model_version, dumps = time.time(), self.model_version, orjson.dumps
        try:
            return b"".join(
                [
                    dumps(
                        {
                            "user_id": user_id,
                            "embedding": row,
                            "model_version": model_version,
                            "state_version": state_version,
                            "last_event_id": last_event_id,
                            "event_ts": event_ts,
                            "computed_at": now,
                            "n_nodes": n_nodes,
                        },
                        option=ORJSON_LINE,
                    )
                    for user_id, state_version, last_event_id, event_ts, n_nodes, row in zip(
                        *published, vectors.astype(np.float64), strict=True
                    )
                ]
            )
        except (TypeError, orjson.JSONEncodeError):  # a lone surrogate, say: make() says what msgspec says
            return None


NUMBER_LIMIT = 1e16
"""From here orjson writes a float's exponent with a sign (``1e+16``), msgspec without."""
ORJSON_LINE = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


@dataclass
class Staged:
    """A batch through :meth:`Pipeline.stage`: its result, its vectors (or their pending forward), its write."""

    result: BatchResult
    published: Published | None
    deferred: Deferred | None
    """The batch's vectors, maybe still computing in the forward process (``None``: ``result.embeddings`` are made)."""
    write: Callable[[], None]
    graphs: dict[str, UserGraph]
    """The batch's graphs to write: the next batch, staged before this one is written, reads its users here."""
    n_records: int
    seconds: float
    """Time :meth:`Pipeline.stage` took, and of it the forward's part here (metrics)."""
    embed_seconds: float


class Sink(Protocol):
    """Where a runner sends a batch's output: files (the file runner), or anything synchronous.

    :meth:`publish` returns once the embeddings and dead letters are durable (written and
    flushed): only then does the pipeline store the batch's state.
    """

    def publish(self, result: BatchResult) -> None: ...


class AsyncSink(Protocol):
    """A :class:`Sink` that waits in an event loop: the Faust worker, until the broker acknowledged."""

    async def publish(self, result: BatchResult) -> None: ...


class Pipeline:
    """decode → apply → embed → publish (the runner's :class:`Sink`) → commit; knows nothing of Kafka or files.

    >>> from graph_state import GraphConfig, MemoryStore
    >>> from operators import Checkpoint, Embedder, EncoderConfig
    >>> from stream_app.core.records import RawRecord
    >>> embedder = Embedder(Checkpoint.seeded(EncoderConfig(dim=8), seed=0))
    >>> pipeline = Pipeline(MemoryStore(GraphConfig()), embedder)
    >>> class Printed:  # a Sink: the file runner writes files, the worker sends to Kafka
    ...     def publish(self, result):
    ...         for emb in result.embeddings:
    ...             print(emb.user_id, emb.state_version, len(emb.embedding))
    ...         for dead in result.dead_letters:
    ...             print("dead letter:", dead.reason)
    >>> batch = [
    ...     RawRecord(b'{"event_id": "e1", "user_id": "ann", "item_id": "i1", "action": "view", "ts": 1767225600}'),
    ...     RawRecord(b'{"event_id": "e2", "user_id": "ann", "item_id": "i2", "action": "cart", "ts": 1767225601}'),
    ...     RawRecord(b'{"user_id": "bob"}'),
    ... ]
    >>> result = pipeline.run(batch, Printed())
    ann 2 8
    dead letter: missing_field
    >>> dict(result.outcomes)
    {'rejected': 1, 'applied': 2}
    >>> _ = pipeline.run(batch[:1], Printed())  # a redelivered event: nothing changes, nothing published
    >>> pipeline.store.get_many(["ann"])["ann"].state_version
    2
    >>> pipeline.forget(["ann", "zoe"])  # user → whether it had state
    {'ann': True, 'zoe': False}
    """

    def __init__(
        self,
        store: GraphStore,
        embedder: Embedder,
        limits: EventLimits | None = None,
        metrics: Metrics | None = None,
        head: LabelHead | None = None,
        explain_top: int = 0,
        recommender: Recommender | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.limits = limits or EventLimits(actions=store.config.actions)
        self.metrics = metrics
        self.check_actions(embedder.checkpoint, store.config.actions)
        if metrics is not None and isinstance(store, CachedStore):
            cache = store
            metrics.graph_cache_bytes.set_function(lambda: cache.nbytes)  # read at scrape time
        if head is not None:
            head.check_encoder(embedder.checkpoint)
        self.head = head
        self.output = OutputRecords(embedder.checkpoint, head)
        self.explain_top = explain_top
        self.recommender = recommender or Recommender()
        """``RIPPLE_RECOMMEND_TOP``: the top items of each published vector (see :meth:`embed`)."""
        self.recommender.check(embedder.checkpoint)
        if metrics is not None:
            metrics.set_model(embedder.model_version)

    @staticmethod
    def check_actions(checkpoint: Checkpoint, actions: Sequence[str]) -> None:
        """Refuse a model trained with another action vocabulary than the graphs are built with."""
        if tuple(checkpoint.config.actions) != tuple(actions):
            raise ValueError(E_ACTIONS.format(model=checkpoint.config.actions, settings=tuple(actions)))

    def swap_model(self, embedder: Embedder) -> str:
        """Serve ``embedder`` from the next batch on; returns the model version it replaced.

        The caller makes sure no batch is between :meth:`process` and :meth:`commit` (the
        worker holds its batch lock). Nothing else needs resetting: the per-node layer caches
        in the graphs are keyed by ``model_version``, so each user's next batch recomputes
        their graph fully with the new model.
        """
        self.check_actions(embedder.checkpoint, self.store.config.actions)
        old = self.embedder.model_version
        self.embedder = embedder
        self.output = OutputRecords(embedder.checkpoint, self.head)
        if self.head is not None and self.head.encoder_version != embedder.checkpoint.encoder_version:
            log.warning(
                W_HEAD_STALE, self.head.head_version, self.head.encoder_version, embedder.checkpoint.encoder_version
            )
        if self.metrics is not None:
            self.metrics.set_model(embedder.model_version)
        return old

    def decode(self, records: Sequence[RawRecord], result: BatchResult) -> list[tuple[RawRecord, BehaviorEvent]]:
        valid: list[tuple[RawRecord, BehaviorEvent]] = []
        for record in records:
            decoded = decode_event(record.value, record.key, self.limits)
            if isinstance(decoded, Rejection):
                self._reject(result, record, decoded.reason, decoded.detail)
            else:
                valid.append((record, decoded))
        return valid

    @staticmethod
    def _reject(result: BatchResult, record: RawRecord, reason: str, detail: str) -> None:
        result.dead_letters.append(DeadLetter.of(record, reason, detail))
        result.rejected[reason] += 1
        result.outcomes[REJECTED] += 1

    def process(self, records: Sequence[RawRecord]) -> BatchResult:
        started = time.perf_counter()
        result, to_publish, deltas = self._apply(records)
        embed_started = time.perf_counter()
        result.embeddings = self.embed(to_publish, deltas)
        if self.metrics is not None:
            now = time.perf_counter()
            self._observe(result, len(records), now - started, now - embed_started)
        return result

    def _apply(
        self, records: Sequence[RawRecord], pending: Mapping[str, UserGraph] | None = None
    ) -> tuple[BatchResult, dict[str, UserGraph], dict[str, UserDelta]]:
        """Steps 1-2: the batch's result so far, the users to publish and their deltas.

        ``pending``: graphs of a staged batch not yet written (:meth:`stage`): their users' live state.
        """
        result = BatchResult()
        valid = self.decode(records, result)
        users = list(dict.fromkeys(event.user_id for _, event in valid))
        if pending:
            graphs = {uid: pending[uid] for uid in users if uid in pending}
            graphs.update(self.store.get_many([uid for uid in users if uid not in graphs]))
        else:
            graphs = self.store.get_many(users)
        config = self.store.config
        to_publish: dict[str, UserGraph] = {}
        deltas: dict[str, UserDelta] = {}
        done = apply_events(
            valid,
            graphs,
            partial(UserGraph, config),
            frozenset(config.actions),  # an action outside them counts as "other"
            to_publish,
            result.graphs,
            result.restore,
            deltas,  # a new user's (from version 0) finds no layer cache: a full forward, as without one
            result.earliest_ts,
        )
        for i, late_by in done.late:
            self._reject(
                result,
                valid[i][0],
                LATE_EVENT,
                f"event is {late_by:.0f} s older than the user's "
                f"previous one; RIPPLE_MAX_LATENESS_S allows {config.max_lateness_s:.0f} s",
            )
        if done.duplicates:
            result.outcomes[DUPLICATE] += done.duplicates
        if done.applied:
            result.outcomes[APPLIED] += done.applied
        result.unknown_actions += done.unknown_actions
        result.new_users += done.new_graphs
        return result, to_publish, deltas

    def embed(
        self, graphs: Mapping[str, UserGraph], deltas: Mapping[str, UserDelta] | None = None
    ) -> list[UserEmbedding]:
        """One batched forward over the given users' graphs (incremental where a delta allows)."""
        if not graphs:
            return []
        deltas = deltas or {}
        vectors = self.embedder.embed_changed(list(graphs.values()), [deltas.get(uid) for uid in graphs])
        return self._records(Published.of(graphs), vectors, list(graphs.values()))

    def _records(
        self, published: Published, vectors: np.ndarray, graphs: Sequence[UserGraph] | None
    ) -> list[UserEmbedding]:
        """The batch's output records: ``published`` is each user's state as of the batch's end;
        ``graphs`` their graphs for explanations and recommendations (``None``: they moved on since,
        :meth:`stage` hands over only batches that need neither)."""
        explanations: list[list[Explained] | None] | None = None
        recommended: list[list[Recommended] | None] | None = None
        if graphs is not None:
            if self.explain_top > 0:
                checkpoint = self.embedder.checkpoint
                explanations = [
                    [
                        Explained(p.item_id, p.action, round(p.share, 6))
                        for p in explain(checkpoint, g, self.explain_top)
                    ]
                    for g in graphs
                ]
            recommended = self.recommender.top_many(self.embedder.checkpoint, vectors, graphs)
        return self.output.make(published, vectors, explanations, recommended)

    # ---- two batches at once: the file runner with a forward process ----------------

    def can_stage(self) -> bool:
        """Whether :meth:`stage` may hand forwards to a process: the store can encode a batch before
        writing it, and no output reads a graph after its batch (explanations, recommendations)."""
        return self._can_prepare() and self.explain_top <= 0 and self.recommender.top <= 0

    def _can_prepare(self) -> bool:
        store = self.store.inner if isinstance(self.store, CachedStore) else self.store
        return hasattr(store, "prepare_many")

    def stage(
        self,
        records: Sequence[RawRecord],
        meta: Mapping[str, bytes] | None = None,
        forward: ForwardProcess | None = None,
        pending: Sequence[Staged] = (),
    ) -> Staged:
        """Steps 1-3 of a batch, its state encoded for the write: :meth:`finish` publishes and writes it.

        With ``forward`` (and :meth:`can_stage`), the batch's full forward runs in the forward process
        (the incremental engine's part here) while the caller stages the next batches (``pending``: the
        staged batches not finished yet, oldest first, whose users' graphs this one continues). Finish
        batches in order. The store must encode before it writes (``prepare_many``: RocksDB, memory).

        A forward process with a ``post`` (the file runner's) gets each batch's published states with
        its vectors and returns its output as the sink's bytes (``BatchResult.encoded``): the records
        are made and formatted on the process's core, not this one.
        """
        if not self._can_prepare():
            raise TypeError(f"{type(self.store).__name__} cannot encode a batch before writing it; use run()")
        started = time.perf_counter()
        live: dict[str, UserGraph] = {}
        for staged in pending:
            live.update(staged.graphs)  # a user of two staged batches: the same graph object in both
        with self.dropping_cache_on_failure():
            result, to_publish, deltas = self._apply(records, live)
            embed_started = time.perf_counter()
            deferred: Deferred | None = None
            published: Published | None = None
            if forward is not None and to_publish and self.can_stage():
                # Each user's state now: its graph may move on (the next batch) before the vectors come.
                published = Published.of(to_publish)
                deferred = self.embedder.embed_deferred(
                    list(to_publish.values()),
                    [deltas.get(uid) for uid in to_publish],
                    forward,
                    published if forward.post is not None else None,
                )
            else:
                result.embeddings = self.embed(to_publish, deltas)
            graphs = _to_store(result)
            write = self.store.prepare_many(graphs, meta)  # type: ignore[attr-defined]  # _can_prepare
        done = time.perf_counter()
        return Staged(result, published, deferred, write, graphs, len(records), done - started, done - embed_started)

    def finish(self, staged: Staged, sink: Sink) -> BatchResult:
        """The rest of :meth:`run` for a staged batch: its vectors, publish, then its state written."""
        result = staged.result
        with self.dropping_cache_on_failure():
            started = time.perf_counter()
            if staged.deferred is not None and staged.published is not None:
                vectors = staged.deferred.result()
                if staged.deferred.posted is not None:
                    result.encoded = staged.deferred.posted
                    result.encoded_users = staged.published.user_ids
                else:
                    assert vectors is not None  # only a posted batch comes without them
                    result.embeddings = self._records(staged.published, vectors, None)
            if self.metrics is not None:
                # The batch's own time: its staging, then waiting for its vectors (not the next batch's staging).
                waited = time.perf_counter() - started
                self._observe(result, staged.n_records, staged.seconds + waited, staged.embed_seconds + waited)
            sink.publish(result)
            staged.write()
        self.observe_published(result)
        return result

    def run(self, records: Sequence[RawRecord], sink: Sink, meta: Mapping[str, bytes] | None = None) -> BatchResult:
        """One micro-batch through the whole protocol: process → publish → commit → observe.

        ``meta`` is stored with the batch's state in the same write (the file runner's progress).
        """
        with self.dropping_cache_on_failure():
            result = self.process(records)
            sink.publish(result)
            self.commit(result, meta)
        self.observe_published(result)
        return result

    async def run_async(
        self, records: Sequence[RawRecord], sink: AsyncSink, meta: Mapping[str, bytes] | None = None
    ) -> BatchResult:
        """:meth:`run` with a sink that publishes in an event loop (the worker)."""
        with self.dropping_cache_on_failure():
            result = self.process(records)
            await sink.publish(result)
            self.commit(result, meta)
        self.observe_published(result)
        return result

    def forget(self, users: Sequence[str]) -> dict[str, bool]:
        """Delete users' graphs from the store and its cache; user → whether it had state.

        Deleting a user without state is not an error (a redelivered request is harmless).
        The runner publishes the tombstones (the worker: on the embeddings topic).
        """
        with self.dropping_cache_on_failure():
            found = forget_users(self.store, users)
        if self.metrics is not None:
            self.metrics.users_deleted.inc(len(found))
            if removed := sum(found.values()):
                self.metrics.users.dec(removed)
        return found

    def drop_cached(self) -> None:
        """Forget the decoded graphs in front of the store (after a failed batch, or a rebalance)."""
        if isinstance(self.store, CachedStore):
            self.store.clear()

    @contextmanager
    def dropping_cache_on_failure(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            # process() mutates cached graphs in place; uncommitted, they must not outlive the batch.
            self.drop_cached()
            raise

    def commit(self, result: BatchResult, meta: Mapping[str, bytes] | None = None) -> None:
        """Store the batch's changed graphs, the republished ones again (and runner metadata) atomically."""
        graphs = _to_store(result)
        if graphs or meta:
            self.store.put_many(graphs, meta)

    def observe_published(self, result: BatchResult, now: float | None = None) -> None:
        """Record event-to-publish latency once the caller has published the batch."""
        if self.metrics is None:
            return
        now = time.time() if now is None else now
        for ts in result.earliest_ts.values():
            self.metrics.latency.observe(max(0.0, now - ts))
        self.metrics.published.inc(len(result.published_users))

    def _observe(self, result: BatchResult, n: int, batch_seconds: float, embed_seconds: float) -> None:
        m = self.metrics
        assert m is not None
        m.batch_size.observe(n)
        for outcome, count in result.outcomes.items():
            m.events.labels(outcome=outcome).inc(count)
        for reason, count in result.rejected.items():
            m.dead_letters.labels(reason=reason).inc(count)
        if result.unknown_actions:
            m.unknown_actions.inc(result.unknown_actions)
        if result.new_users:
            m.users.inc(result.new_users)
        m.embed_seconds.observe(embed_seconds)
        m.batch_seconds.observe(batch_seconds)


def forget_users(store: GraphStore, users: Sequence[str]) -> dict[str, bool]:
    """The one way a user's state is deleted (:meth:`Pipeline.forget`, ``ripple forget --state``)."""
    return {user: store.delete(user) for user in users}
