"""The embedded side without Kafka: the file runner, event file readers, the generator and exports."""
