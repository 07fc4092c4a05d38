"""The live avatar that `python serve.py` streams over WebRTC."""

from ernerf.apps.live.avatar import LOOKAHEAD_SECONDS, LiveAvatar, Stream, Utterance
from ernerf.apps.live.serve import serve_command

__all__ = ["LOOKAHEAD_SECONDS", "LiveAvatar", "Stream", "Utterance", "serve_command"]
