"""ernerf.io."""
