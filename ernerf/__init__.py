"""ER-NeRF talking-head avatars: preprocessing, training and inference."""

from ernerf.errors import ErnerfError

__all__ = ["ErnerfError"]
__version__ = "0.1.0"
