"""ernerf.encoders."""
