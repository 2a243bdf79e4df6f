"""The worker's Kafka transport: Faust's aiokafka transport with two fetch stalls removed.

Both were found pacing a worker at 3,000 events/s (72 % of its backlog rate) on one broker: its
input lag stepped up by ~1.5 s every few seconds and never came down, while its event loop was
35 % idle (docs/benchmarks.md, "Kafka end to end").

1. **A fetch held for an idle topic.** aiokafka sends one fetch request per broker at a time, and
   leaves out the partitions whose last records the application has not consumed yet. The worker
   also consumes the deletions topic, which is idle nearly always: while the input partitions
   still had records buffered, the next request asked for the deletions partitions alone, and
   the broker held it for ``fetch_max_wait_ms`` — which Faust fixes at 1,500 ms — waiting for
   data that never came. For those 1.5 s no fetch for the input topic could go out.
   :class:`FetchWaitConsumerThread` sets the wait from ``RIPPLE_CONSUMER_FETCH_MAX_WAIT_S``
   (default 0.05, which met the latency bound; Kafka's Java consumer uses 500 ms). An idle
   worker then sends ~20 empty fetches a second, which costs the broker and the worker next to
   nothing.
2. **A second of sleep when the stream's buffer is full.** Faust stops fetching a partition while
   the stream's buffer is under pressure (at 1/1.25 of ``stream_buffer_maxsize``) and fetches it
   again when the buffer has drained to 40 %; when every partition is stopped that way its
   fetcher sleeps a whole second before it looks again. :class:`BufferAwareConsumer` waits for
   the drain instead (Faust calls ``on_buffer_drop``), with that second as the upper bound.

3. **Four tasks per message.** Faust's fetch loop hands every message to the streams with
   ``await self.wait_first(callback(message), self.suspend_flow.wait())``: four tasks (the
   callback, the suspend flag, the service's stopped and crashed flags) and an
   ``asyncio.wait`` per message, three of them cancelled again — so that a rebalance can
   interrupt a callback that blocks on a full stream buffer. The callback nearly never blocks:
   :meth:`BufferAwareConsumer.wait_first` runs it inline up to its first suspension and takes
   Faust's path with the rest of it only when it does suspend (:func:`finish_stepped`), or when
   a flag is already set.

The consumer also holds back acks of messages fetched before a rebalance from the commit
(``stream_app/kafka/stale_acks.py``). Everything else (flow control in rebalances, paused
partitions, the consumer thread) is Faust's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, AppT
from mode.services import WaitArgT, WaitResults

from stream_app.kafka.stale_acks import HeldStaleAcks

BUFFERED_WAIT_S = 1.0
"""Longest wait for a drained buffer when every partition is stopped (Faust's own sleep)."""


class _Yielded:
    """Awaitable that yields, once, what a coroutine stepped by hand yielded to its task.

    That is a future (with its ``_asyncio_future_blocking`` flag still set, as the task expects)
    or ``None`` (a bare yield: ``asyncio.sleep(0)``); the coroutine reads the future's result itself
    when it is resumed.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, None]:
        yield self.value


async def finish_stepped(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """Run the rest of ``coro``, which was stepped by hand (``coro.send(None)``) and yielded ``yielded``.

    Awaited in a task, this is that task running ``coro`` from where it stopped: it waits for what
    ``coro`` waits for and resumes it; a cancellation is thrown into ``coro`` (which cleans up,
    as it would in a task of its own).
    """
    while True:
        try:
            await _Yielded(yielded)
        except BaseException as exc:  # handed to the coroutine, which decides
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            return stop.value


class FetchWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread whose aiokafka consumer uses the transport's fetch wait."""

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read by the consumer's Fetcher, which start() creates: the consumer is not started yet.
        # The wait is the settings' (RippleTransport); any other transport keeps Faust's own.
        if (wait := getattr(transport, "fetch_max_wait_s", None)) is not None:
            consumer._fetch_max_wait_ms = int(wait * 1000)
        return consumer


class BufferAwareConsumer(HeldStaleAcks):
    """Faust's aiokafka consumer with the fetch wait of :class:`FetchWaitConsumerThread`, no blind sleep."""

    _buffer_dropped: asyncio.Event | None = None

    async def wait_first(self, *coros: WaitArgT, timeout: Any = None) -> WaitResults:
        """Faust's ``wait_first``, with the first coroutine run inline up to its first suspension.

        Faust's fetch loop calls this once per message (item 3 of the module docstring). When the
        first coroutine completes without suspending, and neither a flow suspension nor a stop is
        pending, it is the first to complete — what ``asyncio.wait`` over its tasks would report
        one loop iteration later — and no task is made. A coroutine that suspends continues in
        Faust's path, as a task (:func:`finish_stepped`), raced against the others as before.
        """
        first = coros[0] if coros else None
        pending = self.suspend_flow.is_set() or self._stopped.is_set() or self._crashed.is_set()
        if pending or not asyncio.iscoroutine(first):
            return await super().wait_first(*coros, timeout=timeout)
        others = coros[1:]
        try:
            yielded = first.send(None)
        except BaseException as exc:
            for other in others:
                if asyncio.iscoroutine(other):
                    other.close()  # never started: closing it is what cancelling its task would do
            if isinstance(exc, StopIteration):
                return WaitResults([first], [exc.value], False)
            raise  # as Faust's path raises the exception of a failed first task
        rest = finish_stepped(first, yielded)
        results = await super().wait_first(rest, *others, timeout=timeout)
        return results._replace(done=[first if winner is rest else winner for winner in results.done])

    def _new_consumer_thread(self) -> FetchWaitConsumerThread:
        return FetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _dropped(self) -> asyncio.Event:
        if self._buffer_dropped is None:
            self._buffer_dropped = asyncio.Event()
        return self._buffer_dropped

    def on_buffer_drop(self, tp: TP) -> None:
        super().on_buffer_drop(tp)
        self._dropped().set()

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        if self.flow_active and not self.app.client_only and not self._get_active_partitions():
            # Faust would sleep a second here; wake as soon as a buffer drains instead.
            dropped = self._dropped()
            dropped.clear()
            self.not_waiting_next_records.set()
            await self.wait_for_stopped(dropped, timeout=BUFFERED_WAIT_S)
            if not self._get_active_partitions():  # still stopped (paused, or the buffer still full)
                return {}, set()
        return await super()._wait_next_records(timeout)


class RippleTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`BufferAwareConsumer` (installed by ``build_app``)."""

    Consumer = BufferAwareConsumer

    def __init__(self, url: Any, app: AppT, *, fetch_max_wait_s: float) -> None:
        super().__init__(url, app)
        self.fetch_max_wait_s = fetch_max_wait_s
