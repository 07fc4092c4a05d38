"""ernerf.preprocess."""
