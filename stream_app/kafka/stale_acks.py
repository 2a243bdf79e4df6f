"""Offsets around a rebalance that Faust skips: acks held back from the commit, copies delivered again.

faust-streaming (0.15.3) loses input events around a rebalance in two ways. CI lost one user's
event in the failover test (``tests/integration/test_worker_failover.py``: a worker that had
just joined; its partition's first batch started after the lost offset, so the offset guard had
no earlier batch to compare with). The second way was then seen in a traced failover run (a log
line per seek, read-offset write and dropped message); the first follows from Faust's code and is
what the unit tests reproduce with Faust's own bookkeeping:

1. **Stale acks.** A message fetched before the latest rebalance (its ``generation_id`` is stale)
   is skipped by the stream — and *acked* all the same (``faust/streams.py``, "Skipping message
   ... with generation_id"). An acked offset is committable, and Faust's commit timer also fires
   between the new assignment and the recovery's seek to the committed offsets. When that commit
   comes first, the group's offset moves past events no agent processed and the seek starts
   after them: lost, never dead-lettered, consumer lag 0.
2. **Dropped copies.** Faust's fetch loop drops every message below the partition's *read offset*
   (the offset after the last message it handed to a stream) as already read. Messages of the
   new generation that aiokafka fetched before the recovery's seek still move that read offset
   forward after the seek reset it, so the copies the seek fetches again are dropped: 18 of 18
   messages (106..123) of one partition in one run, two of which no stream had seen.

:class:`HeldStaleAcks` (the worker's consumer, ``fetch_flow.BufferAwareConsumer``) closes both:

- an ack of a message whose ``generation_id`` is not the current one marks the message done for
  Faust's bookkeeping (its unacked set, ``wait_empty``), but the offset is *held*, not acked;
  the commit of a partition never passes its lowest held offset (:meth:`_new_offset`);
- a message below the read offset is delivered instead of dropped (:meth:`_to_message` lowers
  the read offset to it): at-least-once instead of at-most-once; a copy the agent already
  processed is ignored by the user's graph as a duplicate (its event-id ring,
  ``graph_state/user_graph.py``);
- a held offset is released when its message is acked in the current generation, by
  :meth:`release` (the offset guard refetched and processed it,
  ``stream_app/kafka/offset_guard.py``), when a commit already covers it, or when the partition
  is revoked.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, ConsumerMessage, Message
from faust.types.tuples import ack_lock
from mode.utils.futures import notify


class HeldStaleAcks(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer: stale-generation acks never let the commit pass them, no copy dropped."""

    _held: dict[TP, set[int]] | None = None
    seek_generation: int | None = None
    """Consumer generation of the latest seek to the committed offsets (Faust's recovery does it)."""
    seek_offsets: dict[TP, int] | None = None
    """Where that seek put each assigned partition (the group's committed offset; unknown ones left out)."""

    async def perform_seek(self) -> None:
        await super().perform_seek()
        committed = self._committed_offset
        self.seek_offsets = {tp: o for tp in self.assignment() if (o := committed.get(tp)) is not None}
        self.seek_generation = self.app.consumer_generation_id

    def held_offsets(self, tp: TP) -> set[int]:
        """Offsets of ``tp`` acked only by a stale-generation message (not committable yet)."""
        if self._held is None:
            self._held = {}
        return self._held.setdefault(tp, set())

    def ack(self, message: Message) -> bool:
        generation = message.generation_id
        if generation is None or generation == self.app.consumer_generation_id:
            done = super().ack(message)
            if self._held and message.tp in self._held:
                self._held[message.tp].discard(message.offset)  # processed in this generation
            return done
        if not self.app.topics.acks_enabled_for(message.topic):
            return super().ack(message)
        with ack_lock:
            if message.acked:
                return False
            message.acked = True
            self._unacked_messages.discard(message)
            tp, offset = message.tp, message.offset
            committed = self._committed_offset[tp]
            if (committed is None or offset >= committed) and offset not in self._acked_index[tp]:
                self.held_offsets(tp).add(offset)
        notify(self._waiting_for_ack)
        return False

    def _to_message(self, tp: TP, record: Any) -> ConsumerMessage:
        message = super()._to_message(tp, record)
        read = self._read_offset.get(tp)
        if read is not None and message.offset < read and tp.topic in self.app.topics.acking_topics:
            self._read_offset[tp] = message.offset  # Faust's fetch loop would drop it as already read
        return message

    def release(self, tp: TP, start: int, end: int) -> None:
        """Offsets ``start <= offset < end`` of ``tp`` were processed outside Faust: committable.

        They become a gap for Faust's commit (as offsets it never saw) and stop being held.
        """
        held = self._held.get(tp) if self._held else None
        if held:
            held.difference_update([o for o in held if start <= o < end])
        committed = self._committed_offset[tp]
        start = start if committed is None else max(start, committed)
        if start < end:
            self._gap[tp].addi(start, end)
            self._gap[tp].merge_overlaps()

    def _new_offset(self, tp: TP) -> int | None:
        held = self._held.get(tp) if self._held else None
        if held:
            committed = self._committed_offset[tp]
            if committed is not None:
                held.difference_update([o for o in held if o < committed])  # a commit covers them already
            acked = self._acked[tp]
            if held and acked and min(acked) > min(held):
                return None  # the lowest held offset is not processed yet: commit nothing past it
        return super()._new_offset(tp)

    async def on_partitions_revoked(self, revoked: set[TP]) -> Any:
        if self._held:
            for tp in revoked:
                self._held.pop(tp, None)
        return await super().on_partitions_revoked(revoked)
