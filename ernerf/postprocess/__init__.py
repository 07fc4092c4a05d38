"""ernerf.postprocess."""
