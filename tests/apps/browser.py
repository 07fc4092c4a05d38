"""Headless Chromium (Debian's package) driven over the DevTools protocol with aiohttp's websocket: enough to test
the live page in a real browser, with a fake microphone playing a wav. No browser-automation dependency."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")

# Without the networking flags Chromium's own connections (updates, sync...) are refused by a closed network.
HEADLESS_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required", "--window-size=800,1200",
                  "--remote-debugging-port=0"]
FAKE_MICROPHONE_FLAGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


class DevTools:
    """One DevTools session on a page: commands answered in order (no domain is enabled, so no events arrive)."""

    def __init__(self, ws: Any, browser_pid: int | None = None) -> None:
        self.ws, self.last_id, self.browser_pid = ws, 0, browser_pid

    async def call(self, method: str, **params: Any) -> dict:
        self.last_id += 1
        await self.ws.send_json({"id": self.last_id, "method": method, "params": params})
        async for message in self.ws:
            reply = json.loads(message.data)
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method}: {reply['error']}")
                return reply["result"]
        raise RuntimeError(f"Chromium closed the DevTools connection during {method}")

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited), as a user gesture (clicks count)."""
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True,
                                 userGesture=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw in the page: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float) -> Any:
        """Poll `expression` until it is truthy; -> its value. Fails with the expression's last value."""
        deadline, value = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                value = await self.evaluate(expression)
            except RuntimeError as exc:  # the page was navigating: its old JavaScript context is gone
                if "context" not in str(exc):
                    raise
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"{expression!r} still {value!r} after {timeout} s")

    async def open(self, url: str, timeout: float = 20.0) -> None:
        """Navigate to `url` and wait until the page has loaded."""
        await self.call("Page.navigate", url=url)
        await self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'", timeout)

    async def choose_file(self, selector: str, path: Path) -> None:
        """Choose `path` in the file input `selector`, as a user picking it would."""
        root = await self.call("DOM.getDocument")
        node = await self.call("DOM.querySelector", nodeId=root["root"]["nodeId"], selector=selector)
        await self.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(path)])

    async def screenshot(self, path: Path) -> Path:
        shot = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


async def _devtools_port(profile: Path, process: asyncio.subprocess.Process, timeout: float = 30.0) -> int:
    """The port Chromium chose (--remote-debugging-port=0), from the first line of DevToolsActivePort."""
    active = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.returncode is None:
        if active.exists() and active.read_text().strip():
            return int(active.read_text().splitlines()[0])
        await asyncio.sleep(0.1)
    raise RuntimeError(f"Chromium did not open its DevTools port: see {profile / 'chromium.log'}")


@asynccontextmanager
async def headless_chromium(profile: Path, microphone_wav: Path) -> AsyncIterator[DevTools]:
    """Chromium with a new profile in `profile` and a microphone that plays `microphone_wav` (looped); -> DevTools on
    its blank page. The browser is stopped on exit."""
    profile.mkdir(parents=True, exist_ok=False)
    flags = [*HEADLESS_FLAGS, *FAKE_MICROPHONE_FLAGS, f"--use-file-for-fake-audio-capture={microphone_wav}",
             f"--user-data-dir={profile}", "about:blank"]
    with open(profile / "chromium.log", "wb") as log:
        process = await asyncio.create_subprocess_exec(CHROMIUM, *flags, stdout=log, stderr=log)
    try:
        import aiohttp

        port = await _devtools_port(profile, process)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                page = next(t for t in await r.json() if t["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield DevTools(ws, process.pid)
    finally:
        signal_browser(process.pid, signal.SIGCONT)  # a browser a test froze (freeze_browser) can stop
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()


def signal_browser(pid: int, signum: int) -> None:
    """Send `signum` to the browser `pid` and every process it started (its network service sends the WebRTC
    packets, its renderers make them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        except OSError:  # a process that ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree = [pid]
    for parent in tree:
        tree.extend(children.get(parent, []))
    for member in tree:
        try:
            os.kill(member, signum)
        except ProcessLookupError:
            pass


def freeze_browser(page: DevTools) -> None:
    """Stop the browser's processes dead (SIGSTOP), as a laptop whose lid is shut: nothing more comes from it, and
    it says no goodbye. thaw_browser() lets it go on."""
    signal_browser(page.browser_pid, signal.SIGSTOP)


def thaw_browser(page: DevTools) -> None:
    signal_browser(page.browser_pid, signal.SIGCONT)


def mouth_meter(rows: slice, cols: slice) -> str:
    """JavaScript that records, for every video frame the page shows, (seconds, mean level 0-255 of the pixels at
    rows x cols of the frame) in window.mouthLevels; performance.now() / 1000 is its clock."""
    return f"""(() => {{
  const video = document.getElementById("avatar"), canvas = document.createElement("canvas");
  const context = canvas.getContext("2d", {{willReadFrequently: true}});
  window.mouthLevels = [];
  const sample = () => {{
    canvas.width = video.videoWidth; canvas.height = video.videoHeight;
    context.drawImage(video, 0, 0);
    const pixels = context.getImageData({cols.start}, {rows.start}, {cols.stop - cols.start},
                                        {rows.stop - rows.start}).data;
    let sum = 0;
    for (let i = 0; i < pixels.length; i += 4) sum += pixels[i] + pixels[i + 1] + pixels[i + 2];
    window.mouthLevels.push([performance.now() / 1000, sum / (pixels.length / 4 * 3)]);
    video.requestVideoFrameCallback(sample);
  }};
  video.requestVideoFrameCallback(sample);
  return true;
}})()"""
