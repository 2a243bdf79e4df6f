"""The broker that deploy/kafka/kafka.sh starts is a real Kafka that our clients can use."""

from __future__ import annotations

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic


def test_produce_and_consume_on_a_multi_partition_topic(broker, unique):
    topic = f"smoke-{unique}"
    admin = KafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=10_000)
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=broker)
    for n in range(40):
        producer.send(topic, key=f"u{n % 7}".encode(), value=f"v{n}".encode())
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=broker, auto_offset_reset="earliest", consumer_timeout_ms=10_000)
    seen = [(m.partition, m.key, m.value) for m in consumer]
    consumer.close()
    assert len(seen) == 40
    assert len({p for p, _, _ in seen}) > 1
    by_key: dict[bytes, set[int]] = {}
    for p, k, _ in seen:
        by_key.setdefault(k, set()).add(p)
    assert all(len(parts) == 1 for parts in by_key.values())
