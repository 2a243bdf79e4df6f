"""Acks of messages from an earlier consumer generation never let Faust's commit pass them
(stream_app/kafka/stale_acks.py): the worker's consumer against Faust's own bookkeeping."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP, ConsumerMessage

from stream_app.core.settings import Settings
from stream_app.kafka.faust_app import build_app
from stream_app.kafka.stale_acks import HeldStaleAcks

TOPIC = "events"
TP0 = TP(TOPIC, 0)


@pytest.fixture
def consumer(tmp_path, monkeypatch):
    app = build_app(Settings.from_env({}, state_dir=str(tmp_path)))
    monkeypatch.setattr(app.topics, "acks_enabled_for", lambda topic: True)
    app.consumer_generation_id = 7
    consumer = app.consumer
    assert isinstance(consumer, HeldStaleAcks)
    consumer._committed_offset[TP0] = 10  # the group's committed offset: 10 is the next one to process
    return consumer


def message(offset: int, generation: int) -> ConsumerMessage:
    return ConsumerMessage(TOPIC, 0, offset, 0.0, 0, None, None, b"{}", None, tp=TP0, generation_id=generation)


def ack(consumer, offsets, generation: int) -> list[ConsumerMessage]:
    messages = [message(o, generation) for o in offsets]
    for m in messages:
        consumer._unacked_messages.add(m)
        m.ack(consumer)
    return messages


def test_a_stale_generation_ack_is_not_committable(consumer):
    """Faust alone would commit 20 here: offsets 10..14 were only skipped by the stream, never processed."""
    stale = ack(consumer, range(10, 15), generation=6)
    ack(consumer, range(15, 20), generation=7)
    assert consumer._new_offset(TP0) is None
    assert consumer.held_offsets(TP0) == set(range(10, 15))
    # Done for Faust's shutdown and rebalance bookkeeping all the same (no wait_empty stall).
    assert all(m.acked for m in stale) and not consumer._unacked_messages


def test_the_redelivered_copies_release_the_commit(consumer):
    ack(consumer, range(10, 15), generation=6)
    ack(consumer, range(15, 20), generation=7)
    ack(consumer, range(10, 15), generation=7)  # the seek to the committed offset delivers them again
    assert consumer._new_offset(TP0) == 20
    assert not consumer.held_offsets(TP0)


def test_the_commit_stops_right_before_the_lowest_held_offset(consumer):
    ack(consumer, range(10, 13), generation=7)
    ack(consumer, [13], generation=6)
    ack(consumer, range(14, 18), generation=7)
    assert consumer._new_offset(TP0) == 13
    assert consumer._new_offset(TP0) is None  # 14..17 wait for 13


def test_offsets_processed_by_the_offset_guard_are_released_as_a_gap(consumer):
    ack(consumer, range(10, 15), generation=6)
    ack(consumer, range(15, 20), generation=7)
    consumer.release(TP0, 10, 15)  # refetched and processed by the worker, never seen again by Faust
    assert not consumer.held_offsets(TP0)
    assert consumer._new_offset(TP0) == 20


def test_a_stale_ack_of_an_offset_already_committed_or_acked_holds_nothing(consumer):
    ack(consumer, [5], generation=6)  # below the committed offset
    ack(consumer, [12], generation=7)
    ack(consumer, [12], generation=6)  # a stale copy of an offset processed in this generation
    assert not consumer.held_offsets(TP0)


def test_a_revoked_partition_forgets_its_held_offsets(consumer, monkeypatch):
    ack(consumer, range(10, 15), generation=6)

    async def app_callback(revoked):  # the app's own rebalance work is not under test here
        return None

    monkeypatch.setattr(consumer, "_on_partitions_revoked", app_callback)
    asyncio.run(consumer.on_partitions_revoked({TP0}))
    assert not consumer.held_offsets(TP0)


def test_current_generation_acks_are_fausts(consumer):
    ack(consumer, range(10, 20), generation=7)
    assert consumer._new_offset(TP0) == 20
    assert not consumer.held_offsets(TP0)


def record(offset: int) -> ConsumerRecord:
    return ConsumerRecord(TOPIC, 0, offset, 0, 0, None, b"{}", None, 0, 2, [])


def test_a_message_below_the_read_offset_is_delivered_not_dropped(consumer, monkeypatch):
    """Faust's fetch loop delivers a message only if ``offset >= read offset`` (else: dropped as read)."""
    monkeypatch.setattr(consumer.app.topics, "_acking_topics", {TOPIC})
    consumer._read_offset[TP0] = 124  # moved forward by messages fetched before the seek to 106
    for offset in (106, 107, 124, 125):
        message = consumer._to_message(TP0, record(offset))
        assert message.offset >= consumer._read_offset[TP0], offset  # the loop's own test: delivered
        consumer._read_offset[TP0] = offset + 1 if offset >= 124 else offset  # what the loop then stores
    assert message.generation_id == 7


def test_messages_of_topics_without_acks_keep_fausts_read_offset(consumer, monkeypatch):
    monkeypatch.setattr(consumer.app.topics, "_acking_topics", set())  # e.g. a table's changelog in recovery
    consumer._read_offset[TP0] = 124
    consumer._to_message(TP0, record(106))
    assert consumer._read_offset[TP0] == 124


def test_the_seek_to_the_committed_offsets_is_recorded_for_the_offset_guard(consumer, monkeypatch):
    async def seek_to_committed():
        return {TP0: 50, TP(TOPIC, 1): 0}

    monkeypatch.setattr(consumer, "seek_to_committed", seek_to_committed)
    monkeypatch.setattr(consumer, "assignment", lambda: {TP0, TP(TOPIC, 1)})
    asyncio.run(consumer.perform_seek())
    # Faust keeps a committed offset 0 as "unknown" (None): the guard then starts at the first batch.
    assert consumer.seek_offsets == {TP0: 50} and consumer.seek_generation == 7
