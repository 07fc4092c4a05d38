"""Noticing a client that vanished from the network without closing its connection (lid shut, network dropped,
browser killed), from the RTCP receiver reports it stops sending.

A WebRTC receiver reports on the media it receives (RTCP receiver reports, RFC 3550; sent by every browser and by
aiortc's receivers, so the Python client too) about once a second. aiortc's RTCRtpSender keeps the last one as the
"remote-inbound-rtp" entry of its statistics, stamped with its arrival. Without them a vanished client is noticed only
by ICE consent checks (aioice: about 30 s), all the while taking its share of the render queue. The reports need no
change on the client's side, unlike a heartbeat of the page's own.

Only silence while the client is being sent media counts: a receiver reports on what it received, so a stream that
stalls (no frames rendered for a while) may rightly go unreported. A client that never reported is not watched at
all: a peer without receiver reports is left to ICE consent rather than cut off wrongly.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

# How often a session's senders are asked for their statistics: a fraction of the timeout, so a vanished client is
# noticed within about the timeout, and rarely enough that many clients cost nothing noticeable.
CHECK_SECONDS = 0.5


class ReportWatch:
    """Whether a client still answers, from what was sent to it and when its last receiver report came.

    Fed a reading at a time (`vanished`); it says the client has vanished once media was being sent to it
    `timeout_seconds` ago and no report has come since."""

    def __init__(self, timeout_seconds: float) -> None:
        self.timeout_seconds = timeout_seconds
        self.last_report: Any = None  # the last report's arrival stamp; None until the client's first report
        self.packets_sent = 0
        # When packets sent after the last report were first seen; None: everything sent has been reported on
        self.unanswered_since: float | None = None

    def vanished(self, now: float, packets_sent: int, last_report: Any) -> bool:
        """Take a reading at time `now` (seconds): packets sent to the client so far, the stamp of its last report."""
        sent = packets_sent > self.packets_sent
        self.packets_sent = packets_sent
        if last_report != self.last_report:
            self.last_report = last_report
            # packets seen in the same reading may have been sent after the report: counted from now, never earlier
            self.unanswered_since = now if sent else None
        elif sent and self.unanswered_since is None and self.last_report is not None:
            self.unanswered_since = now
        return self.unanswered_since is not None and now - self.unanswered_since > self.timeout_seconds

    def stalled(self, seconds: float) -> None:
        """The server could not read reports for `seconds` (its event loop was busy): reports of that time may wait
        unread in the socket, so it does not count as the client's silence."""
        if self.unanswered_since is not None:
            self.unanswered_since += seconds


async def sender_reports(pc: Any) -> tuple[int, datetime.datetime | None]:
    """Packets sent so far on `pc` (an aiortc RTCPeerConnection), and the arrival of the latest receiver report on
    any of its senders (None before the first)."""
    packets, last = 0, None
    for sender in pc.getSenders():
        for stats in (await sender.getStats()).values():
            if stats.type == "outbound-rtp":
                packets += stats.packetsSent
            elif stats.type == "remote-inbound-rtp" and (last is None or stats.timestamp > last):
                last = stats.timestamp
    return packets, last


async def watch_reports(pc: Any, timeout_seconds: float, on_vanished: Callable[[], Awaitable[None]],
                        clock: Callable[[], float] | None = None) -> None:
    """Await `on_vanished()` once the client of `pc` stops reporting while being sent media (ReportWatch); `clock`
    (seconds) is the event loop's time unless given. Time the watch wakes late by is the loop's stall, not the
    client's silence (`ReportWatch.stalled`)."""
    watch, clock = ReportWatch(timeout_seconds), clock or asyncio.get_running_loop().time
    while True:
        asleep = clock()
        await asyncio.sleep(CHECK_SECONDS)
        late = clock() - asleep - CHECK_SECONDS
        if late > CHECK_SECONDS:
            watch.stalled(late)
        if watch.vanished(clock(), *await sender_reports(pc)):
            log.info("a client sent no receiver reports for %.1f s while receiving media: it has vanished from the "
                     "network, its session ends", timeout_seconds)
            await on_vanished()
            return
