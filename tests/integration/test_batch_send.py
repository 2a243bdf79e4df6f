"""``send_batched`` (stream_app/kafka/batch_send.py) on the real broker: one record batch per partition,
keys partitioned as every Kafka client does, acks without waiting out the producer's linger."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaProducer
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.partitioner import DefaultPartitioner

from stream_app.kafka.batch_send import send_batched

LINGER_S = 3.0


class FaustProducer:
    """What ``send_batched`` reads of Faust's producer: the aiokafka producer under it."""

    def __init__(self, aio: AIOKafkaProducer) -> None:
        self.aio = aio

    def _ensure_producer(self) -> AIOKafkaProducer:
        return self.aio


def test_batches_are_acked_without_the_linger_and_keyed_like_any_client(broker, unique):
    topic = f"batch-send-{unique}"
    admin = KafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=10_000)
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    admin.close()
    records = [(f"u{n % 9}".encode(), f"v{n}".encode(), None) for n in range(60)]
    sent: dict[int, int] = {}

    async def send() -> float:
        aio = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=int(LINGER_S * 1000), acks="all")
        await aio.start()
        try:
            await aio.partitions_for(topic)  # the topic's metadata, not timed
            started = time.perf_counter()
            futures = await send_batched(FaustProducer(aio), topic, records, on_sent=sent.__setitem__)
            await asyncio.gather(*futures)
            return time.perf_counter() - started
        finally:
            await aio.stop()

    took = asyncio.run(send())
    assert took < LINGER_S / 2, f"the batches waited {took:.2f} s: they lingered (linger {LINGER_S} s)"

    consumer = KafkaConsumer(topic, bootstrap_servers=broker, auto_offset_reset="earliest")
    seen: list[tuple[int, int, bytes, bytes]] = []
    deadline = time.monotonic() + 20
    while len(seen) < len(records) and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            seen += [(m.partition, m.offset, m.key, m.value) for m in batch]
    consumer.close()
    assert sorted(v for *_, v in seen) == sorted(v for _, v, _ in records)
    # Every key on the partition that kafka-python's (and Java's) default partitioner picks, in the order sent.
    partitions = [0, 1, 2, 3]
    expected = {key: DefaultPartitioner()(key, partitions, partitions) for key, _, _ in records}
    for partition, _, key, _ in seen:
        assert partition == expected[key]
    for key in expected:
        values = [v for _, _, k, v in sorted(seen) if k == key]
        assert values == [v for k, v, _ in records if k == key]
    # on_sent: each partition's last offset, as the table records its persisted changelog offset.
    last = {}
    for partition, offset, _, _ in seen:
        last[partition] = max(last.get(partition, -1), offset)
    assert sent == last
