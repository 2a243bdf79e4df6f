"""What every runner shares: settings, the event and record contracts, the pipeline, metrics (no Kafka, no CLI)."""
