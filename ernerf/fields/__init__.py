"""ernerf.fields."""
