"""ernerf.losses."""
