"""The offset guard notices holes in a partition's offsets and keeps expectations only across held partitions."""

from __future__ import annotations

from stream_app.core.records import RawRecord
from stream_app.kafka.offset_guard import STALLED_S, OffsetGuard, in_partition_order


def rec(partition: int, offset: int) -> RawRecord:
    return RawRecord(value=b"{}", key=b"u", source="events", partition=partition, offset=offset)


def test_a_jump_past_the_expected_offset_is_a_hole_and_redeliveries_are_not():
    guard = OffsetGuard()
    guard.on_assigned({0, 1}, generation=5)
    first = [rec(0, 201), rec(1, 7), rec(0, 202), rec(0, 203), rec(0, 204)]
    assert guard.holes(first) == []  # nothing expected yet
    guard.advance(first)
    assert guard.holes([rec(0, 206), rec(1, 8), rec(0, 207)]) == [(0, 205, 206)]
    assert guard.holes([rec(0, 203), rec(0, 205), rec(1, 8)]) == []  # redelivered, then contiguous
    assert guard.holes([rec(0, 205), rec(0, 209), rec(1, 10)]) == [(0, 206, 209), (1, 8, 10)]
    assert guard.holes([rec(-1, -1)]) == []  # file records carry no offsets


def test_expectations_survive_only_a_consecutive_rebalance_that_keeps_the_partition():
    guard = OffsetGuard()
    guard.on_assigned({0, 1, 2}, generation=3)
    guard.advance([rec(0, 10), rec(1, 20), rec(2, 30)])
    guard.on_assigned({0, 1}, generation=4)  # kept 0 and 1 through the rebalance; 2 went elsewhere
    assert guard.expected == {0: 11, 1: 21}
    guard.on_assigned({0, 1, 2}, generation=6)  # generation 5 happened without us: others may have consumed
    assert guard.expected == {}
    assert guard.holes([rec(0, 50)]) == []


def test_refetched_records_go_before_later_ones_of_their_partition():
    batch = [rec(0, 201), rec(1, 7), rec(0, 206), rec(1, 8)]
    merged = in_partition_order(batch, [rec(0, 205), rec(0, 202)])
    assert [(r.partition, r.offset) for r in merged] == [(0, 201), (0, 202), (0, 205), (0, 206), (1, 7), (1, 8)]
    assert in_partition_order(batch, []) == batch


def test_a_newly_assigned_partition_expects_where_the_seek_put_it():
    guard = OffsetGuard()
    guard.on_assigned({0, 1}, generation=4)
    guard.advance([rec(0, 10)])
    guard.anchor({0: 3, 1: 40})  # 0 has an expectation of its own already
    assert guard.expected == {0: 11, 1: 40}
    assert guard.holes([rec(1, 42)]) == [(1, 40, 42)]  # the first batch starts after the committed offset


def test_offsets_fetched_but_unprocessed_for_a_while_are_found_once_nothing_holds_them():
    guard = OffsetGuard({0: 10, 1: 5, 2: 7})
    guard.skip(2, 7, 9)  # undecodable, dead-lettered: not missing
    positions = {0: 12, 1: 5, 2: 9}
    assert guard.unprocessed(positions, busy=set(), now=0.0) == []
    assert guard.unprocessed(positions, busy={0}, now=STALLED_S) == []  # a stream still holds messages of 0
    assert guard.unprocessed(positions, busy=set(), now=STALLED_S + 1) == []  # the clock started again
    assert guard.unprocessed(positions, busy=set(), now=2 * STALLED_S + 1) == [(0, 10, 12)]
    guard.advance([rec(0, 10)])  # the seek brought 10 through the stream; 11 never comes
    assert guard.unprocessed({0: 12}, busy=set(), now=2 * STALLED_S + 2) == []
    assert guard.unprocessed({0: 12}, busy=set(), now=3 * STALLED_S + 2) == [(0, 11, 12)]
    guard.settle(0, 12)  # read again: no record there (a transaction marker)
    assert guard.unprocessed({0: 12}, busy=set(), now=5 * STALLED_S) == []
    assert guard.expected[0] == 12
