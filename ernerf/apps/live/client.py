"""The client side of `serve.py`'s WebRTC exchange, for Python clients (the benchmark, the tests, scripts)."""

from __future__ import annotations

from typing import Any


async def connect(pc: Any, http: Any, url: str) -> str:
    """Offer `pc` (an aiortc RTCPeerConnection with its transceivers and tracks added) to the server at `url` over
    `http` (an aiohttp ClientSession), apply its answer; -> the session id that /say and /audio take."""
    from aiortc import RTCSessionDescription

    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(f"{url}/offer", json={"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}) as r:
        answer = await r.json()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    return answer["session"]
