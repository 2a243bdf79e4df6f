"""Many Kafka records per call: one aiokafka record batch per partition, one future per batch.

The worker sends one embedding and one changelog record per touched user per micro-batch.
Through ``Producer.send`` each record is its own coroutine, accumulator entry and future
(and through a Faust table write, also a ``FutureMessage``, a buffer entry and sensor
calls); here a micro-batch's records for one partition go into one ``BatchBuilder`` that is
queued whole, so the per-record cost is one ``append``. Records keep their order within a
partition, partitions come from the producer's own partitioner (murmur2 of the key, as every
Kafka client), and compression is the producer's. A batch is closed when it is queued: it is
complete, so it goes out at once instead of waiting out the producer's linger.

Exactly-once workers (transactional producers) do not use this: their records must go
through Faust's per-partition transactions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

Record = tuple[bytes | None, bytes | None, int | None]
"""(key, value, partition); ``None`` partition: the producer's partitioner picks it from the key."""
OnSent = Callable[[int, int], None]
"""Called as ``on_sent(partition, last_offset)`` once a partition's records are acked."""


async def send_batched(
    producer: Any, topic: str, records: Iterable[Record], on_sent: OnSent | None = None
) -> list[asyncio.Future]:
    """Queue ``records`` on ``topic``; returns one future per record batch (await them for the acks).

    ``producer`` is Faust's aiokafka producer (``app.producer``). ``on_sent`` lets the caller
    learn the last offset written per partition (the table keeps it as its persisted offset).
    """
    aio = producer._ensure_producer()  # the AIOKafkaProducer under Faust's Producer
    all_partitions = sorted(await aio.partitions_for(topic))
    builders: dict[int, Any] = {}
    futures: list[asyncio.Future] = []

    async def ship(partition: int, builder: Any) -> None:
        count = builder.record_count()
        # Complete: closed, it leaves at once instead of lingering (``RIPPLE_PRODUCER_LINGER_S``) for
        # records that would never come, and no ``producer.send`` elsewhere can add to it.
        builder.close()
        fut = await aio.send_batch(builder, topic, partition=partition)
        if on_sent is not None:
            fut.add_done_callback(
                lambda f, p=partition, n=count: (
                    None if f.cancelled() or f.exception() else on_sent(p, f.result().offset + n - 1)
                )
            )
        futures.append(fut)

    partitioner = aio._partitioner
    for key, value, partition in records:
        if partition is None:
            partition = partitioner(key, all_partitions, all_partitions)
        builder = builders.get(partition)
        if builder is None:
            builder = builders[partition] = aio.create_batch()
        if builder.append(timestamp=None, key=key, value=value) is None:  # full: ship it, start another
            await ship(partition, builder)
            builder = builders[partition] = aio.create_batch()
            if builder.append(timestamp=None, key=key, value=value) is None:
                raise ValueError(f"a record of {len(value or b'')} bytes does not fit an empty producer batch")
    for partition, builder in builders.items():
        if builder.record_count():
            await ship(partition, builder)
    return futures
