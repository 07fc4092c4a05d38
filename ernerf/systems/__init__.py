"""ernerf.systems."""
