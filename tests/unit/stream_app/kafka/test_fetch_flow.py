"""The worker's fetch path (stream_app/kafka/fetch_flow.py): the broker's fetch wait comes from the
settings instead of Faust's fixed 1.5 s, and a fetcher whose partitions are all stopped for a full
stream buffer wakes when the buffer drains instead of sleeping a second."""

from __future__ import annotations

import asyncio
import time

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from stream_app.core.settings import Settings
from stream_app.kafka.faust_app import build_app
from stream_app.kafka.fetch_flow import BufferAwareConsumer, FetchWaitConsumerThread


def _fetch_wait_ms(settings: Settings, thread_class: type) -> int:
    """``fetch_max_wait_ms`` of the aiokafka consumer that ``thread_class`` builds for this app."""

    async def build() -> int:
        app = build_app(settings)
        consumer = thread_class._create_worker_consumer(app.consumer._thread, app.transport)
        try:
            return consumer._fetch_max_wait_ms
        finally:
            await consumer.stop()

    return asyncio.run(build())


def test_worker_fetch_wait_comes_from_the_settings_not_fausts_fixed_value(tmp_path):
    default = Settings.from_env({}, state_dir=str(tmp_path))
    assert _fetch_wait_ms(default, faust_aiokafka.AIOKafkaConsumerThread) == 1500  # what Faust alone does
    assert _fetch_wait_ms(default, FetchWaitConsumerThread) == 50
    tuned = Settings.from_env({"RIPPLE_CONSUMER_FETCH_MAX_WAIT_S": "0.5"}, state_dir=str(tmp_path))
    assert _fetch_wait_ms(tuned, FetchWaitConsumerThread) == 500


def test_the_worker_app_uses_the_fetch_flow_consumer(tmp_path):
    app = build_app(Settings.from_env({}, state_dir=str(tmp_path)))
    assert isinstance(app.consumer, BufferAwareConsumer)
    assert isinstance(app.consumer._thread, FetchWaitConsumerThread)


@pytest.mark.parametrize("value", ["0", "-1", "31"])
def test_a_fetch_wait_out_of_range_is_refused_with_its_name(tmp_path, value):
    with pytest.raises(ValueError, match="consumer_fetch_max_wait_s"):
        Settings.from_env({"RIPPLE_CONSUMER_FETCH_MAX_WAIT_S": value}, state_dir=str(tmp_path))


def _consumer_with_a_full_buffer(tmp_path, monkeypatch, tp: TP) -> BufferAwareConsumer:
    """The worker app's consumer, assigned ``tp`` only, whose stream buffer is under pressure (tp not fetched)."""
    consumer = build_app(Settings.from_env({}, state_dir=str(tmp_path))).consumer
    monkeypatch.setattr(consumer, "assignment", lambda: {tp})
    consumer.on_buffer_full(tp)
    return consumer


def test_a_fetcher_stopped_by_a_full_buffer_wakes_when_the_buffer_drains(tmp_path, monkeypatch):
    tp = TP("events", 0)

    async def scenario() -> tuple[float, set, list]:
        consumer = _consumer_with_a_full_buffer(tmp_path, monkeypatch, tp)
        fetched_for: list = []

        async def getmany(active_partitions, timeout):
            fetched_for.append(set(active_partitions))
            return {}

        monkeypatch.setattr(consumer, "_getmany", getmany)
        assert not consumer._get_active_partitions()
        started = time.perf_counter()
        waiting = asyncio.ensure_future(consumer._wait_next_records(1.0))
        await asyncio.sleep(0.05)
        assert not waiting.done() and not fetched_for  # nothing to fetch yet
        consumer.on_buffer_drop(tp)
        _, active = await waiting
        return time.perf_counter() - started, active, fetched_for

    took, active, fetched_for = asyncio.run(scenario())
    assert active == {tp} and fetched_for == [{tp}]  # it fetched tp again, right after the drain
    assert took < 0.5, f"the fetcher slept {took:.2f} s after the buffer drained (Faust sleeps 1 s)"


def test_a_fetcher_with_nothing_to_fetch_returns_empty_after_the_bound(tmp_path, monkeypatch):
    tp = TP("events", 0)
    monkeypatch.setattr("stream_app.kafka.fetch_flow.BUFFERED_WAIT_S", 0.05)

    async def scenario():
        return await _consumer_with_a_full_buffer(tmp_path, monkeypatch, tp)._wait_next_records(1.0)

    assert asyncio.run(scenario()) == ({}, set())


def _consumer(tmp_path) -> BufferAwareConsumer:
    return build_app(Settings.from_env({}, state_dir=str(tmp_path))).consumer


def _count_tasks(monkeypatch) -> list[object]:
    """Every task Faust's ``wait_first`` makes (mode.services calls ``asyncio.ensure_future``)."""
    made: list[object] = []
    real = asyncio.ensure_future

    def counting(coro, **kwargs):
        made.append(coro)
        return real(coro, **kwargs)

    monkeypatch.setattr("mode.services.asyncio.ensure_future", counting)
    return made


def test_a_message_callback_that_does_not_block_runs_inline_without_tasks(tmp_path, monkeypatch):
    """Faust's fetch loop: ``wait_first(callback(message), suspend_flow.wait())`` per message."""
    made = _count_tasks(monkeypatch)
    ran: list[str] = []

    async def callback() -> str:
        ran.append("callback")
        return "delivered"

    async def scenario():
        consumer = _consumer(tmp_path)
        first, flag = callback(), consumer.suspend_flow.wait()
        results = await consumer.wait_first(first, flag)
        assert flag.cr_frame is None  # closed, not left unawaited
        return first, results

    first, results = asyncio.run(scenario())
    assert ran == ["callback"] and made == []
    assert results.done == [first] and results.results == ["delivered"] and not results.stopped


def test_a_callback_that_blocks_finishes_as_a_task_raced_against_the_flow_flag(tmp_path, monkeypatch):
    made = _count_tasks(monkeypatch)

    async def scenario():
        consumer = _consumer(tmp_path)
        room = asyncio.get_running_loop().create_future()

        async def callback() -> str:
            value = await room  # a full stream buffer
            await asyncio.sleep(0)  # a bare yield on the way
            return f"delivered after {value}"

        first = callback()
        waiting = asyncio.get_running_loop().create_task(consumer.wait_first(first, consumer.suspend_flow.wait()))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        room.set_result("a drain")
        return first, await waiting

    first, results = asyncio.run(scenario())
    assert results.done == [first] and results.results == ["delivered after a drain"]
    assert len(made) == 4  # Faust's own path: the rest of the callback, the flag, stopped, crashed


def test_a_blocked_callback_is_cancelled_by_a_flow_suspension_and_cleans_up(tmp_path):
    async def scenario():
        consumer = _consumer(tmp_path)
        cleaned: list[str] = []

        async def callback() -> None:
            try:
                await asyncio.get_running_loop().create_future()  # never has room
            except asyncio.CancelledError:
                cleaned.append("cancelled")
                raise

        waiting = asyncio.ensure_future(consumer.wait_first(callback(), consumer.suspend_flow.wait()))
        await asyncio.sleep(0.01)
        consumer.suspend_flow.set()  # a rebalance begins
        results = await waiting
        for _ in range(3):
            await asyncio.sleep(0)  # the cancellation reaches the callback
        return results, cleaned

    results, cleaned = asyncio.run(scenario())
    assert cleaned == ["cancelled"] and len(results.done) == 1 and results.results == [True]  # the flag won


def test_a_callback_that_fails_at_once_raises_as_in_fausts_path(tmp_path):
    async def callback() -> None:
        raise ValueError("undecodable")

    async def scenario():
        consumer = _consumer(tmp_path)
        flag = consumer.suspend_flow.wait()
        with pytest.raises(ValueError, match="undecodable"):
            await consumer.wait_first(callback(), flag)
        assert flag.cr_frame is None

    asyncio.run(scenario())


def test_with_the_flow_suspended_the_callback_takes_fausts_path(tmp_path, monkeypatch):
    made = _count_tasks(monkeypatch)

    async def scenario():
        consumer = _consumer(tmp_path)
        consumer.suspend_flow.set()

        async def callback() -> str:
            return "late"

        return await consumer.wait_first(callback(), consumer.suspend_flow.wait())

    results = asyncio.run(scenario())
    assert len(made) == 4 and not results.stopped


def test_a_callback_that_blocks_then_fails_raises_through_fausts_path(tmp_path):
    async def scenario():
        consumer = _consumer(tmp_path)
        room = asyncio.get_running_loop().create_future()

        async def callback() -> None:
            await asyncio.sleep(0)  # a bare yield first
            await room

        waiting = asyncio.get_running_loop().create_task(consumer.wait_first(callback(), consumer.suspend_flow.wait()))
        await asyncio.sleep(0.01)
        room.set_exception(ValueError("the channel failed"))
        with pytest.raises(ValueError, match="the channel failed"):
            await waiting

    asyncio.run(scenario())
