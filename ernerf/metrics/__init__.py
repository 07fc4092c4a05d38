"""ernerf.metrics."""
