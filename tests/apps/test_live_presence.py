"""A client that vanishes from the network without closing (lid shut, network dropped, browser killed) is noticed
from its RTCP receiver reports stopping, and its session ends as a closed one does, while the other clients go on."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from ernerf.apps.live.avatar import LiveAvatar
from ernerf.apps.live.presence import CHECK_SECONDS, ReportWatch, sender_reports
from ernerf.apps.live.serve import text_to_speech, vanished_client_seconds
from ernerf.errors import ErnerfError
from tests.apps.test_live import avatar, serving, speech  # noqa: F401 - the avatar fixture
from tests.conftest import compose
from tests.postprocess.conftest import mini_subject  # noqa: F401 - session fixture the avatar needs

pytest.importorskip("aiortc")

from aiohttp import ClientSession  # noqa: E402 - after the skip: the live extra may be missing

from ernerf.apps.live.server import LiveServer  # noqa: E402
from tests.apps.test_live_input import FastSpeech, pages, receiving_client, say  # noqa: E402

# ---------------------------------------------------------------- the watch alone, on readings it is fed


def readings(watch: ReportWatch, seconds: float, sending: bool, reporting_every: float | None,
             start: float = 0.0, packets: int = 0) -> list[float]:
    """Feed `watch` a reading every CHECK_SECONDS for `seconds` from `start`: packets sent (10 more each reading
    while `sending`), a report every `reporting_every` seconds (None: none); -> the times it said vanished."""
    said, report = [], watch.last_report
    for k in range(1, int(seconds / CHECK_SECONDS) + 1):
        now = start + k * CHECK_SECONDS
        packets += 10 if sending else 0
        if reporting_every is not None and k % round(reporting_every / CHECK_SECONDS) == 0:
            report = now
        if watch.vanished(now, packets, report):
            said.append(now)
    return said


def test_a_client_that_reports_while_it_is_sent_media_stays() -> None:
    watch = ReportWatch(timeout_seconds=3.0)
    assert readings(watch, 60.0, sending=True, reporting_every=1.5) == []  # aiortc's longest gap between reports


def test_reports_that_stop_while_media_is_sent_mean_the_client_vanished_after_the_timeout() -> None:
    watch = ReportWatch(timeout_seconds=3.0)
    readings(watch, 5.0, sending=True, reporting_every=1.0)
    assert readings(watch, 10.0, sending=True, reporting_every=None, start=5.0, packets=100)[0] == 5.0 + 3.5


def test_silence_while_nothing_is_sent_is_not_vanishing_and_the_timeout_counts_from_when_sending_resumes() -> None:
    watch = ReportWatch(timeout_seconds=3.0)
    readings(watch, 5.0, sending=True, reporting_every=1.0)
    # rendering stalls: the client reports on the last packets, then has nothing to report on (a browser stops)
    assert readings(watch, 2.0, sending=False, reporting_every=1.0, start=5.0, packets=100) == []
    assert readings(watch, 20.0, sending=False, reporting_every=None, start=7.0, packets=100) == []
    resumed = readings(watch, 10.0, sending=True, reporting_every=None, start=27.0, packets=100)
    assert resumed[0] == 27.0 + CHECK_SECONDS + 3.5  # the packets first seen at the first reading after 27 s


def test_a_client_that_never_reported_is_not_watched() -> None:
    watch = ReportWatch(timeout_seconds=3.0)  # a peer without receiver reports: left to ICE consent checks
    assert readings(watch, 60.0, sending=True, reporting_every=None) == []


class ScriptedPeer:
    """A peer connection whose one sender has sent 10 more packets at each reading and whose receiver reports arrive
    when the test says (`report`)."""

    def __init__(self) -> None:
        self.packets, self.last_report = 0, None

    def report(self, stamp: float) -> None:
        self.last_report = stamp

    def getSenders(self):  # noqa: N802 - aiortc's name
        return [self]

    async def getStats(self):  # noqa: N802 - aiortc's name
        from types import SimpleNamespace

        self.packets += 10
        stats = {"out": SimpleNamespace(type="outbound-rtp", packetsSent=self.packets)}
        if self.last_report is not None:
            stats["in"] = SimpleNamespace(type="remote-inbound-rtp", timestamp=self.last_report)
        return stats


def test_a_stalled_event_loop_is_not_the_client_s_silence(monkeypatch) -> None:
    """The server's loop is blocked for 4 s (longer than the 1 s timeout) while the client goes on reporting: its
    reports wait unread in the socket, so the watch, waking late, must not end it; once reports stop, it does."""
    from ernerf.apps.live import presence

    clock = {"now": 0.0}
    peer, vanished_at = ScriptedPeer(), []
    real_sleep = asyncio.sleep
    wakes = iter([CHECK_SECONDS, 4.0] + [CHECK_SECONDS] * 20)  # the second sleep of the watch wakes 3.5 s late

    async def sleep(seconds: float) -> None:
        clock["now"] += next(wakes)
        if clock["now"] == CHECK_SECONDS:
            peer.report(1)  # the client's first report, read at the first reading
        if clock["now"] == CHECK_SECONDS + 4.0 + CHECK_SECONDS:
            peer.report(2)  # a report sent during the stall, read one reading after it
        await real_sleep(0)

    async def ended() -> None:
        vanished_at.append(clock["now"])

    monkeypatch.setattr(presence.asyncio, "sleep", sleep)
    asyncio.run(presence.watch_reports(peer, 1.0, ended, clock=lambda: clock["now"]))
    # not at 4.5 s (the first reading after the stall), but a timeout after the last report was read (5.0 s)
    assert vanished_at == [5.0 + 1.0 + CHECK_SECONDS]


def test_serve_config_ends_vanished_clients_after_5_s_by_default_null_turns_it_off_and_0_is_refused() -> None:
    assert vanished_client_seconds(compose("serve", ["subject=x"]).limits) == 5.0
    off = compose("serve", ["subject=x", "limits.vanished_client_seconds=null"])
    assert vanished_client_seconds(off.limits) is None
    with pytest.raises(ErnerfError, match="limits.vanished_client_seconds=0"):
        vanished_client_seconds(compose("serve", ["subject=x", "limits.vanished_client_seconds=0"]).limits)


# ---------------------------------------------------------------- over WebRTC, on the loopback

VANISH_SECONDS = 3.0  # the test server's timeout: twice aiortc's longest gap between receiver reports
# How late after the timeout the session may end: the last report came up to 1.5 s before the client froze, the
# watch reads every CHECK_SECONDS, and a busy CPU delays both.
VANISH_MARGIN_SECONDS = 2.5


class VanishingClient:
    """A WebRTC client on an event loop of its own thread. `freeze()` stops that loop dead, as a client that
    vanishes from the network: nothing more comes from it (no RTCP, no ICE answers) and it says no goodbye."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="vanishing-client", daemon=True)
        self.thread.start()
        self.thawed = threading.Event()
        self.frames: list[float] = []  # arrival times of its video frames
        self.http: ClientSession | None = None
        self.pc = None

    async def _on_its_loop(self, coroutine):
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    async def connect(self, url: str) -> str:
        async def offer() -> str:
            self.http = ClientSession()
            self.pc, session = await receiving_client(self.http, url, self.frames)
            return session

        return await self._on_its_loop(offer())

    def freeze(self) -> None:
        self.loop.call_soon_threadsafe(self.thawed.wait, 120.0)

    async def close(self) -> None:
        self.thawed.set()

        async def shut() -> None:
            if self.pc is not None:
                await self.pc.close()
            if self.http is not None:
                await self.http.close()

        await self._on_its_loop(shut())
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self.thread.join, 10.0)
        self.loop.close()


async def reported(server: LiveServer, session_id: str) -> bool:
    """Whether the server has had a receiver report from the session's client."""
    return (await sender_reports(server.sessions[session_id].pc))[1] is not None


def test_a_client_that_vanishes_without_closing_ends_within_the_timeout_and_the_others_go_on(avatar) -> None:
    engine = FastSpeech(delay=0.2)  # slower than speech ahead: still making the text when its client vanishes
    server = LiveServer(avatar, text_to_speech(engine), decode=lambda data: speech(1.0),
                        vanished_client_seconds=VANISH_SECONDS)

    async def exchange() -> dict:
        vanishing, staying_frames = VanishingClient(), []
        try:
            async with serving(server) as url, ClientSession() as http:
                staying, staying_id = await receiving_client(http, url, staying_frames)
                vanishing_id = await vanishing.connect(url)
                start = time.monotonic()
                while not (await reported(server, staying_id) and await reported(server, vanishing_id)):
                    assert time.monotonic() < start + 20, "no receiver reports came from the clients"
                    await asyncio.sleep(0.1)
                status, _ = await say(http, url, vanishing_id, pages(200))
                await asyncio.sleep(0.5)
                session = server.sessions[vanishing_id]
                vanishing.freeze()
                frozen = time.monotonic()
                while vanishing_id in server.sessions and time.monotonic() < frozen + VANISH_SECONDS + 20:
                    await asyncio.sleep(0.05)
                ended, made, tick = time.monotonic(), len(engine.said), session.stream.tick
                await asyncio.sleep(1.5)
                got = {"status": status, "seconds": ended - frozen, "sessions": list(server.sessions),
                       "staying_id": staying_id, "rest_done": session.rest.done(),
                       "pump_done": session.pump.task.done(), "queue_left": not session.pump.joined,
                       "connection": session.pc.connectionState, "made": made, "made_after": len(engine.said),
                       "tick": tick, "tick_after": session.stream.tick,
                       "staying_after": [t for t in staying_frames if t > ended]}
                await staying.close()
                return got
        finally:
            await vanishing.close()

    got = asyncio.run(exchange())
    assert got["status"] == 200
    assert VANISH_SECONDS - 2.0 < got["seconds"] < VANISH_SECONDS + VANISH_MARGIN_SECONDS, got["seconds"]
    assert got["sessions"] == [got["staying_id"]]  # the other client was not taken for vanished
    assert got["connection"] == "closed" and got["pump_done"] and got["queue_left"] and got["rest_done"]
    assert got["tick_after"] == got["tick"] and got["made_after"] <= got["made"] + 1  # no frames, no synthesis
    assert len(got["staying_after"]) >= 5, "the other client stopped receiving frames"
