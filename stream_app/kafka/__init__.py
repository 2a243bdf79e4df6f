"""The Kafka side: the Faust worker, its table store, offset guard, web views, model swap, and the feed."""
