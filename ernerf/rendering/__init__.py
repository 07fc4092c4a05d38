"""ernerf.rendering."""
