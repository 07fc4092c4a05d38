"""ernerf.audio."""
