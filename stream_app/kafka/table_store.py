"""A :class:`GraphStore` over a Faust table that keeps every user in its own partition.

Why this exists: Faust's RocksDB store and the table's changelog pick the
partition of a write (and of a local read) from the *current event*, a context
variable that stream iteration sets. Inside a ``take_events()`` micro-batch
that is whatever event was set last, so a batch mixing partitions would write
users of partition 0 into partition 3's database and changelog, and lose them
at the next rebalance. The pipeline reads and writes many users per batch, so
this adapter makes the current event truthful for each user:

1. before a batch, :meth:`TableStore.routing` maps every user of the batch to an
   event that arrived on that user's partition (key = ``user_id``; key-less
   messages are skipped: the worker rejects them as ``missing_key``);
2. every read and write groups the users by partition and runs each group with
   that partition's event as the current event — exactly what Faust's own stream
   iteration does for a single event — so the store, the changelog record and
   the key index all use the partition the user's events came from;
3. outside a batch (web views) reads run with no current event, and Faust looks
   the key up in every local partition database.

Writes are atomic per user, not per batch: a batch cut short is redelivered
(at-least-once), and the graphs' ``event_id`` rings turn the already stored part
into duplicates.

**Direct writes** (``direct=True``, the worker outside exactly-once): a table write
through Faust costs a store call, a ``FutureMessage`` through the producer buffer, a
persisted-offset write and sensor calls *per key* — more than the whole rest of the
pipeline per event (``bench/worker_ceiling.py``). So :meth:`put_many` does what Faust
does, once per partition per batch: one RocksDB ``WriteBatch`` into the partition's
database (Faust's own store, the same keys, the key index updated), and the changelog
records go out through :meth:`flush_changelog` as one producer batch per partition, whose
ack sets the partition's persisted changelog offset (what Faust's ``_on_changelog_sent``
does per record). Faust still flushes the producer before it commits input offsets, so
the at-least-once order is Faust's: state and changelog first, input offsets after.
Under exactly-once the table is written the Faust way, inside its transactions.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

from faust.streams import _current_event
from faust.types import TP, EventT
from rocksdict import WriteBatch

from graph_state import GraphConfig, RocksOptions, UserGraph, decode, encode_stored
from stream_app.core.keys import user_of_message
from stream_app.core.records import RawRecord
from stream_app.kafka.batch_send import send_batched

E_UNROUTED = (
    "user {user!r} is written outside its batch's routing (no event of this batch belongs to it); "
    "wrap Pipeline.process/commit in TableStore.routing(events) with the batch's events."
)
E_META = (
    "the Faust table store keeps no runner metadata: Kafka consumer offsets are the worker's progress; "
    "call Pipeline.commit(result) without meta."
)


@contextmanager
def acting_as(event: EventT | None) -> Iterator[None]:
    """Run the block with ``event`` as Faust's current event (``None``: no event)."""
    token = _current_event.set(None if event is None else weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class TableStore:
    """The Faust table of user graphs (key: ``user_id`` bytes, value: codec bytes) as a GraphStore.

    >>> from types import SimpleNamespace
    >>> class Event(SimpleNamespace): ...  # stands in for a faust.Event
    >>> store = TableStore({}, GraphConfig())  # a dict stands in for the Faust table
    >>> batch = [Event(message=Event(partition=2, key=b"u1", value=b"{}"))]
    >>> with store.routing(batch):
    ...     store.put_many({"u1": UserGraph(GraphConfig())})
    ...     store.partition_of("u1")
    2
    >>> sorted(store.user_ids()), store.partition_of("u1")
    (['u1'], None)
    """

    def __init__(
        self,
        table: MutableMapping[Any, Any],
        config: GraphConfig,
        direct: bool = False,
        persist_cache_every: int = RocksOptions.persist_cache_every,
    ) -> None:
        self.table = table
        self.config = config
        self.direct = direct
        self.persist_cache_every = persist_cache_every
        """Write a graph's layer cache only at state versions that are multiples of this (0 = never),
        as the embedded store does (``graph_state.encode_stored``)."""
        self._routes: dict[str, EventT] = {}
        self._pending: list[tuple[bytes, bytes | None, int]] = []
        """Changelog records written to RocksDB by direct writes, not yet handed to the producer."""

    @contextmanager
    def routing(self, events: Sequence[EventT], also: Sequence[RawRecord] = ()) -> Iterator[None]:
        """Route the users of these events to their events' partitions for the block's duration.

        ``also``: records of the same partitions read outside the stream (offsets the
        consumer skipped, see ``stream_app/kafka/offset_guard.py``); their users are routed to
        an event of the batch from the same partition.
        """
        routes: dict[str, EventT] = {}
        of_partition: dict[int, EventT] = {}
        for event in events:
            message = event.message
            of_partition.setdefault(message.partition, event)
            if message.key is None:
                # Rejected (missing_key): it may have arrived on another partition than the user's
                # events, and routing the user there would read and write the wrong database.
                continue
            user = user_of_message(message.key, message.value or b"")
            if user is not None:
                routes[user] = event
        for rec in also:
            carrier = of_partition.get(rec.partition)
            user = None if rec.key is None or carrier is None else user_of_message(rec.key, rec.value)
            if user is not None and carrier is not None:
                routes.setdefault(user, carrier)
        previous, self._routes = self._routes, routes
        try:
            yield
        finally:
            self._routes = previous

    def partition_of(self, user_id: str) -> int | None:
        """The partition the current batch routes this user to (``None`` outside a batch)."""
        event = self._routes.get(user_id)
        return None if event is None else event.message.partition

    def _by_partition(self, user_ids: Iterable[str], write: bool) -> list[tuple[EventT | None, list[str]]]:
        groups: dict[int | None, tuple[EventT | None, list[str]]] = {}
        for uid in user_ids:
            event = self._routes.get(uid)
            if event is None and write:
                raise RuntimeError(E_UNROUTED.format(user=uid))
            partition = None if event is None else event.message.partition
            if partition not in groups:
                groups[partition] = (event, [])
            groups[partition][1].append(uid)
        return list(groups.values())

    def _writes_directly(self) -> bool:
        return self.direct and not self.table.app.in_transaction  # type: ignore[attr-defined]

    def get_many(self, user_ids: Iterable[str]) -> dict[str, UserGraph]:
        found: dict[str, UserGraph] = {}
        direct = self._writes_directly()
        for event, ids in self._by_partition(user_ids, write=False):
            keys = [uid.encode("utf-8") for uid in ids]
            if direct and event is not None:
                # One multi-get on the partition's database (what Faust's _get does key by key).
                db = self.table.data._db_for_partition(event.message.partition)  # type: ignore[attr-defined]
                values = db.get(keys)
            else:
                with acting_as(event):
                    values = [self.table.get(key) for key in keys]
            for uid, raw in zip(ids, values, strict=True):
                if raw is not None:
                    found[uid] = decode(raw, self.config)
        return found

    def put_many(self, graphs: Mapping[str, UserGraph], meta: Mapping[str, bytes] | None = None) -> None:
        if meta:
            raise ValueError(E_META)
        direct = self._writes_directly()
        for event, ids in self._by_partition(graphs, write=True):
            if direct:
                assert event is not None
                items = [(uid.encode("utf-8"), encode_stored(graphs[uid], self.persist_cache_every)) for uid in ids]
                self._write_direct(event.message.partition, items)
                continue
            with acting_as(event):
                for uid in ids:
                    self.table[uid.encode("utf-8")] = encode_stored(graphs[uid], self.persist_cache_every)

    def _write_direct(self, partition: int, items: Sequence[tuple[bytes, bytes | None]]) -> None:
        """One atomic RocksDB batch into the partition's database; the changelog records are queued."""
        store = self.table.data  # type: ignore[attr-defined]
        batch = WriteBatch(raw_mode=True)
        for key, value in items:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        store._db_for_partition(partition).write(batch)
        for key, value in items:
            if value is None:
                store._key_index.pop(key, None)
            else:
                store._key_index[key] = partition
            self._pending.append((key, value, partition))

    async def flush_changelog(self) -> list[Any]:
        """Hand the queued changelog records to the producer (one batch per partition); returns the futures.

        Each partition's ack records its last offset as the table's persisted changelog offset,
        as Faust does for each record it sends itself. Nothing to do after Faust-way writes.
        """
        if not self._pending:
            return []
        pending, self._pending = self._pending, []
        table = self.table
        topic = table.changelog_topic.get_topic_name()  # type: ignore[attr-defined]
        store = table.data  # type: ignore[attr-defined]

        def persisted(partition: int, offset: int) -> None:
            store.set_persisted_offset(TP(topic, partition), offset)

        producer = await table.app.maybe_start_producer()  # type: ignore[attr-defined]
        return await send_batched(producer, topic, pending, on_sent=persisted)

    def discard_pending(self) -> None:
        """Forget queued changelog records (a failed batch: its users are forgotten and reloaded)."""
        self._pending.clear()

    def delete(self, user_id: str) -> bool:
        """Delete a routed user: RocksDB of its partition plus a changelog tombstone there.

        The tombstone is sent even when this worker has no state for the user (returns
        ``False`` then): a redelivered request after a crash that deleted locally but
        lost the changelog record must still reach the changelog, or a rebuild from it
        would bring the user back.
        """
        ((event, _),) = self._by_partition([user_id], write=True)
        key = user_id.encode("utf-8")
        if self._writes_directly():
            assert event is not None
            db = self.table.data._db_for_partition(event.message.partition)  # type: ignore[attr-defined]
            existed = db.get(key) is not None
            self._write_direct(event.message.partition, [(key, None)])
            return existed
        with acting_as(event):
            existed = self.table.get(key) is not None
            try:
                del self.table[key]
            except KeyError:  # a plain dict standing in for the table
                pass
            return existed

    def get_meta(self, name: str) -> bytes | None:
        return None

    def user_ids(self) -> Iterator[str]:
        for key in list(self.table.keys()):
            yield key.decode("utf-8") if isinstance(key, bytes) else str(key)

    def count(self) -> int:
        """Users in this worker's local partitions (walks the keys; call it rarely)."""
        return sum(1 for _ in self.table.keys())

    def close(self) -> None:
        """Nothing to do: the Faust app owns the table."""
