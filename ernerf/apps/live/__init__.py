"""The live avatar that `python serve.py` streams over WebRTC.

The names below are imported when first used: a Python client of the server (`ernerf.apps.live.client`) imports this
package as well, and needs neither torch nor the model that the avatar loads."""

from __future__ import annotations

import importlib

_MODULE_OF = {"LOOKAHEAD_SECONDS": "avatar", "LiveAvatar": "avatar", "Stream": "avatar", "Utterance": "avatar",
              "serve_command": "serve"}

__all__ = list(_MODULE_OF)


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
