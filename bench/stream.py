"""Live streaming of a trained subject: frames/s per stream, speech latency, and how many streams keep 25 frames/s.

    python bench/stream.py --subject trump --runs-root runs --data-root data [--downscale 1] [--streams 1,2,4,8]
        [--batch-frames 1,4]

For each number of concurrent clients it starts `serve.py`'s server in this process on the loopback, connects that
many WebRTC clients (aiortc), lets them idle for `--idle` seconds, asks each to say a sentence, and reports per stream:
frames/s received, the latency from the request to the first received video frame of the speech (the frame whose
40 ms of audio are the first loud ones), the same to its first audio ("heard": after the client's own audio jitter
buffer, which holds 4 packets in aiortc; a browser's adapts to the network), and the part the server spent making
the utterance (speech synthesis and audio features). The features' look-ahead (the audio a live source must have
sent before a frame can render) is fixed by the model's windows: printed beside. With `--microphone` each client
speaks the sentence into its microphone track instead, and the latencies are from the moment the first of its
speech is sent. The clients run in processes of their own
(`--client-processes`), as browsers would: in the server's process they would share its interpreter lock and event
loop and measure themselves as much as the server. Beside each row: this process's CPU milliseconds per frame
received, and the part of them on its event loop (WebRTC's packets, encryption and pacing run there): the loop is
saturated when that part times the frames/s of all streams nears 1,000 ms (5 ms a frame for 8 streams of 25 frames/s).
`--batch-frames` sets the render queue's largest batch
(conf/serve.yaml `render.batch_frames`; several values: each is run with each number of streams); the frames per
model call it reached are printed beside. `--render-only` times the avatar's frames alone (rendered `--batch-frames`
at a time and pasted, no WebRTC, no encoding; `--idle` seconds of warm-up first, `--talk` seconds each): what
batching changes in the model's part of a frame. `--queue-only` runs `--streams` idle streams through the server's
render queue, each asking for its next frame as soon as it has the last (no WebRTC, no encoding, no pacing), their
clocks spread over the video as clients who came at different times: frames/s per stream of everything the server
does for a frame but send it. Repeat values (`--batch-frames 1,4,1,4`) to see the noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from ernerf.cli import keep_torchmetrics_import_lean  # noqa: E402

keep_torchmetrics_import_lean()  # before the first Lightning import, as the entry scripts

SENTENCE = "Hello, I am a talking head, and this is what I sound like when I talk for a few seconds."
LOUD = 300  # mean |sample| of a 20 ms chunk (int16) above which a chunk counts as speech


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loud(frame) -> bool:
    """Whether an audio frame (aiortc/PyAV, int16 samples) holds speech."""
    return bool(np.abs(frame.to_ndarray()).mean() > LOUD)


def speaking(track):
    """`track` (a microphone's audio) as sent, noting in `.first_speech` the monotonic time its first loud frame went
    to the peer: the start of the speech as the server can first see it (the player starts when the connection
    does, not when the offer is answered)."""
    from aiortc import MediaStreamTrack

    class Speaking(MediaStreamTrack):
        kind = "audio"
        first_speech: float | None = None

        async def recv(self):
            frame = await track.recv()
            if self.first_speech is None and loud(frame):
                self.first_speech = time.monotonic()
            return frame

        def stop(self) -> None:  # the player's decoding thread runs until its track stops, past the event loop's end
            super().stop()
            track.stop()

    return Speaking()


async def client(url: str, idle: float, talk: float, microphone: Path | None = None) -> dict:
    """One WebRTC client: connect, idle, ask for the sentence (or speak `microphone`, a wav that starts with `idle`
    seconds of silence, into the avatar), listen; what it received and when."""
    from aiohttp import ClientSession
    from aiortc import RTCPeerConnection
    from aiortc.contrib.media import MediaPlayer

    from ernerf.apps.live.client import connect

    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    spoken = None
    if microphone is None:
        pc.addTransceiver("audio", direction="recvonly")
    else:
        spoken = speaking(MediaPlayer(str(microphone)).audio)
        pc.addTrack(spoken)
    video: list[tuple[float, float]] = []  # (arrival, media time) of each frame received
    audio: list[tuple[float, float, bool]] = []  # (arrival, media time, loud) of each 20 ms received
    readers = []

    def on_track(track) -> None:
        async def read() -> None:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if track.kind == "video":
                    video.append((now, float(frame.time)))
                else:
                    audio.append((now, float(frame.time), loud(frame)))
        readers.append(asyncio.ensure_future(read()))

    pc.on("track", on_track)
    async with ClientSession() as http:
        session = await connect(pc, http, url)
        await asyncio.sleep(idle)
        said: dict = {}
        asked = time.monotonic()
        if microphone is None:
            async with http.post(f"{url}/say", json={"session": session, "text": SENTENCE}) as r:
                said = await r.json()
        await asyncio.sleep(talk)
    for reader in readers:
        reader.cancel()
    await pc.close()
    if spoken is not None:
        asked = spoken.first_speech if spoken.first_speech is not None else math.inf
    arrivals = [t for t, _ in video]
    steady = [t for t in arrivals if t > (arrivals[0] + 1.0 if arrivals else 0)]
    fps = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else 0.0
    heard = next(((t, media) for t, media, is_loud in audio if is_loud and t > asked), None)
    seen = first_frame_of(heard[1] - audio[0][1], video) if heard is not None else None
    return {"fps": fps, "frames": len(video), "latency_s": None if seen is None else seen - asked,
            "heard_s": None if heard is None else heard[0] - asked,
            "prepare_s": said.get("prepare_seconds"), "speech_s": said.get("seconds")}


def first_frame_of(offset: float, video: list[tuple[float, float]]) -> float | None:
    """Arrival time of the video frame that shows the audio `offset` seconds into the stream's audio: the server sends
    each frame's 40 ms of audio with it, both tracks from the stream's first frame on."""
    if not video:
        return None
    start = video[0][1]
    return next((t for t, media in video if media - start >= offset - 0.5 / 25), None)


def client_group(url: str, count: int, idle: float, talk: float, microphone: Path | None) -> list[dict]:
    """`count` clients at once in this process (a worker of the benchmark's client processes)."""
    async def together() -> list[dict]:
        return list(await asyncio.gather(*(client(url, idle, talk, microphone) for _ in range(count))))

    return asyncio.run(together())


class ClientProcesses:
    """Worker processes for the clients, started and warmed (aiortc imported) before any timing: clients in the
    server's process would share its interpreter lock and its event loop, and time themselves as much as the
    server."""

    def __init__(self, processes: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, wait

        self.processes = processes
        self.pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
        wait([self.pool.submit(warm_client) for _ in range(processes)])

    async def run(self, url: str, streams: int, idle: float, talk: float, microphone: Path | None) -> list[dict]:
        """`streams` clients spread evenly over the processes; their figures."""
        counts = [streams // self.processes + (k < streams % self.processes) for k in range(self.processes)]
        loop = asyncio.get_running_loop()
        groups = await asyncio.gather(*(loop.run_in_executor(self.pool, client_group, url, n, idle, talk, microphone)
                                        for n in counts if n))
        return [r for group in groups for r in group]

    def close(self) -> None:
        self.pool.shutdown()


def warm_client() -> None:
    import aiortc.contrib.media  # noqa: F401 - the import is the warm-up


async def run(avatar, streams: int, idle: float, talk: float, microphone: Path | None = None,
              batching=None, clients: ClientProcesses | None = None,
              ahead_frames: int = 1) -> tuple[list[dict], float, dict[str, int]]:
    """Each client's figures, the mean number of frames per model call, and how the clients' live speech fared on the
    server (frames shown; stalls and the frames they held for late audio; dropped as silence; skipped after a stall:
    all clients'). With
    `clients` the clients run in those processes, else in this one."""
    from aiohttp import web

    from ernerf.apps.live.render_queue import RenderBatching
    from ernerf.apps.live.serve import decode_upload, text_to_speech
    from ernerf.apps.live.server import LiveServer

    from ernerf.apps.tts import EspeakSpeech

    # no vanished-client watch: a loaded machine (or clients in this process) may stall the event loop for longer than
    # the watch's timeout; a stream ended that way would read as a slow one
    server = LiveServer(avatar, text_to_speech(EspeakSpeech()), decode_upload, batching=batching or RenderBatching(),
                        vanished_client_seconds=None, ahead_frames=ahead_frames)
    runner = web.AppRunner(server.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        if clients is None:
            results = await asyncio.gather(*(client(url, idle, talk, microphone) for _ in range(streams)))
        else:
            results = await clients.run(url, streams, idle, talk, microphone)
    finally:
        await runner.cleanup()
    sizes = server.render_queue.batch_sizes
    live = dict(server.live_counts)
    live["render_thread"] = thread_shares(server.render_queue.seconds, sum(k * n for k, n in sizes.items()))
    return results, sum(k * n for k, n in sizes.items()) / max(1, sum(sizes.values())), live


def microphone_wav(speech: Path | None, idle: float, out: Path) -> Path:
    """`idle` seconds of silence, then `speech` (a PCM wav, channels averaged) or the sentence synthesised, as a
    16 kHz mono wav at `out`."""
    import wave

    from ernerf.constants import SAMPLE_RATE

    if speech is None:
        from ernerf.apps.live.serve import text_to_speech
        from ernerf.apps.tts import EspeakSpeech

        voice, rate = np.concatenate(list(text_to_speech(EspeakSpeech())(SENTENCE))), SAMPLE_RATE
    else:
        with wave.open(str(speech)) as w:
            if w.getsampwidth() != 2:
                raise SystemExit(f"--speech {speech}: give a 16-bit PCM wav")
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, w.getnchannels())
            voice, rate = pcm.mean(axis=1) / 32768.0, w.getframerate()
    samples = np.concatenate([np.zeros(int(idle * rate)), voice])
    out.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return out


def render_only(avatar, batch: int, seconds: float) -> tuple[float, float]:
    """(frames per second, frames per CPU second of this process) of `avatar.frames` called on `batch` idle frames at
    a time, for at least `seconds` after one untimed call. The frames repeat the first `batch` ticks: their source
    frames and backgrounds are cached after the first call, as a stream's are on its second walk through the
    video. On a CPU shared with other work the CPU seconds vary less than the wall time."""
    wanted = [(t, np.repeat(avatar.idle_window[None], 8, 0)) for t in range(batch)]
    avatar.frames(wanted)
    frames, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        avatar.frames(wanted)
        frames += batch
    return frames / (time.perf_counter() - start), frames / (time.process_time() - cpu)


def queue_only(avatar, streams: int, batching, seconds: float) -> tuple[list[float], float, dict[str, float]]:
    """(frames/s of each stream, frames per model call, the render thread's ms a frame per part: `thread_shares`) of
    `streams` idle streams pulling frames through one render queue as fast as it gives them, for `seconds` after each
    stream's first frame, their clocks spread evenly over the walk through the video."""
    import threading

    from ernerf.apps.live.avatar import Stream
    from ernerf.apps.live.render_queue import RenderQueue

    render_queue = RenderQueue(avatar, batching)
    clients = [Stream(avatar, start_tick=k * avatar.period // streams) for k in range(streams)]
    counts = [0] * streams
    start = threading.Barrier(streams + 1)

    def pull(k: int) -> None:
        render_queue.submit(clients[k]).result()  # untimed: the first frame of a stream
        start.wait()
        begin = time.perf_counter()
        while time.perf_counter() - begin < seconds:
            render_queue.submit(clients[k]).result()
            counts[k] += 1

    for _ in clients:
        render_queue.join()
    threads = [threading.Thread(target=pull, args=(k,)) for k in range(streams)]
    for thread in threads:
        thread.start()
    start.wait()
    began, sizes_before = time.perf_counter(), render_queue.batch_sizes.copy()
    seconds_before = render_queue.seconds.copy()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    sizes = render_queue.batch_sizes - sizes_before  # the model calls of the timed frames (and of a few around them)
    shares = thread_shares(render_queue.seconds - seconds_before, sum(k * n for k, n in sizes.items()))
    render_queue.close(wait_seconds=30.0)
    for stream in clients:
        stream.close()
    return ([count / wall for count in counts], sum(k * n for k, n in sizes.items()) / max(1, sum(sizes.values())),
            shares)


def graph_captures(avatar) -> tuple[int, list[int]]:
    """(captures so far, capacities in samples) of the renderer's whole-frame render graph; (0, []) without one (a
    CPU): a capture inside a timed run is a frame that outgrew the graph's capacity, a stall a live stream shows."""
    graphed = getattr(getattr(avatar.renderer, "execution", None), "graphed_render", None)
    if graphed is None:
        return 0, []
    return graphed.captures, sorted(entry.capacity for entry in graphed.entries.values())


def captures_line(avatar, before: int) -> str:
    """The render graph's captures since `before` and its capacities, as a line under a table row."""
    captures, capacities = graph_captures(avatar)
    if not capacities:
        return f"{'':>14}render graph: none (renders run eagerly)"
    return (f"{'':>14}render graph: {captures - before} captures in the run, capacity "
            f"{', '.join(f'{c:,}' for c in capacities)} samples")


def thread_shares(seconds, frames: int) -> dict[str, float]:
    """The render thread's milliseconds per rendered frame in each part of its work (`RenderQueue.seconds`)."""
    return {part: 1e3 * value / max(1, frames) for part, value in sorted(seconds.items())}


def thread_line(shares: dict[str, float]) -> str:
    """`thread_shares` as a line under a table row."""
    busy = sum(v for part, v in shares.items() if part != "waiting")
    parts = ", ".join(f"{part} {value:.2f}" for part, value in shares.items())
    return f"{'':>14}render thread, ms a frame: {parts} (busy {busy:.2f})"


def summary(results: list[dict]) -> str:
    """Frames/s per stream (min, median), latency seen and heard, and preparation (medians) of one run, as table
    columns."""
    fps = [r["fps"] for r in results]
    med = (lambda key: f"{statistics.median(v):.2f}" if (v := [r[key] for r in results if r[key] is not None])
           else "none")  # noqa: E731
    return (f"{min(fps):>14.1f}{statistics.median(fps):>9.1f}{med('latency_s'):>18}{med('heard_s'):>8}"
            f"{med('prepare_s'):>18}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", required=True)
    parser.add_argument("--runs-root", default="runs")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--stage", default=None)
    parser.add_argument("--downscale", type=int, default=1)
    parser.add_argument("--streams", default="1", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--batch-frames", default="1",
                        help="comma-separated largest batches of the render queue (frames per model call)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="the longest a batch waits for streams that have not asked yet")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds each client idles before asking")
    parser.add_argument("--talk", type=float, default=6.0, help="seconds each client listens after asking")
    parser.add_argument("--microphone", action="store_true",
                        help="speak the sentence into each client's microphone track instead of asking for it as text")
    parser.add_argument("--speech", type=Path,
                        help="with --microphone: this 16-bit PCM wav is spoken instead of the synthesised sentence "
                             "(no speech engine or ffmpeg needed, as on a bare GPU machine)")
    parser.add_argument("--render-only", action="store_true",
                        help="time the avatar's frames rendered --batch-frames at a time, without WebRTC")
    parser.add_argument("--queue-only", action="store_true",
                        help="time --streams idle streams pulling frames through the render queue, without WebRTC")
    parser.add_argument("--client-processes", default="auto",
                        help="processes the WebRTC clients run in, spread evenly (0: in the server's process; auto: "
                             "one per 4 CPU cores, at most one per client)")
    parser.add_argument("--override", action="append", default=[], help="a conf/serve.yaml override (repeatable)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    from ernerf.apps.live.avatar import LOOKAHEAD_SECONDS
    from ernerf.apps.live.render_queue import RenderBatching
    from ernerf.apps.live.serve import ahead_frames, build_avatar, one_blas_thread

    overrides = [f"subject={args.subject}", f"paths.runs_root={args.runs_root}", f"paths.data_root={args.data_root}",
                 f"downscale={args.downscale}", *([f"stage_name={args.stage}"] if args.stage else []), *args.override]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("serve", overrides)
    one_blas_thread()  # as serve.py
    avatar = build_avatar(cfg)
    microphone = None
    if args.microphone:  # the speech after `idle` seconds of silence
        microphone = microphone_wav(args.speech, args.idle, Path("bench/out/stream_microphone.wav"))
    print(f"{args.subject}, {512 // args.downscale} px crops, feature look-ahead {LOOKAHEAD_SECONDS * 1000:.0f} ms")
    if args.render_only:
        render_only(avatar, 1, args.idle)  # the first seconds of rendering are several times slower (warming up)
        print(f"{'batch':>6}{'frames/s (rendered and pasted)':>32}{'frames per CPU second':>23}")
        for batch in [int(b) for b in args.batch_frames.split(",")]:
            wall, cpu = render_only(avatar, batch, args.talk)
            print(f"{batch:>6}{wall:>32.2f}{cpu:>23.2f}", flush=True)
        avatar.close()
        return
    if args.queue_only:
        render_only(avatar, 1, args.idle)  # warming up
        print(f"{'batch':>6}{'streams':>8}{'frames/call':>12}{'frames/s min':>14}{'median':>9}{'all streams':>13}")
        figures = {}
        for batch in [int(b) for b in args.batch_frames.split(",")]:
            batching = RenderBatching(frames=batch, wait_seconds=args.batch_wait_ms / 1000.0)
            for n in [int(s) for s in args.streams.split(",")]:
                captures = graph_captures(avatar)[0]
                fps, per_call, shares = queue_only(avatar, n, batching, args.talk)
                figures[f"batch{batch}_streams{n}"] = {"fps": fps, "frames_per_call": per_call,
                                                       "render_thread_ms": shares,
                                                       "render_graph_captures": graph_captures(avatar)[0] - captures}
                print(f"{batch:>6}{n:>8}{per_call:>12.2f}{min(fps):>14.2f}{statistics.median(fps):>9.2f}"
                      f"{sum(fps):>13.2f}", flush=True)
                print(thread_line(shares), flush=True)
                print(captures_line(avatar, captures), flush=True)
        avatar.close()
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"downscale": args.downscale, "queue_only": figures}, indent=2))
        return
    render_only(avatar, 1, args.idle)  # warming up (the render graph's capture), so the first row does not pay for it
    streams = [int(s) for s in args.streams.split(",")]
    processes = (max(1, min(max(streams), (os.cpu_count() or 1) // 4)) if args.client_processes == "auto"
                 else int(args.client_processes))
    clients = ClientProcesses(processes) if processes > 0 else None
    print(f"WebRTC clients in {processes} process(es) of their own" if processes
          else "WebRTC clients in the server's process")
    print(f"{'batch':>6}{'streams':>8}{'frames/call':>12}{'frames/s min':>14}{'median':>9}{'latency s median':>18}"
          f"{'heard':>8}{'of which prepare':>18}{'CPU ms/frame: process, event loop':>36}")
    figures = {}
    try:
        for batch in [int(b) for b in args.batch_frames.split(",")]:
            batching = RenderBatching(frames=batch, wait_seconds=args.batch_wait_ms / 1000.0)
            for n in streams:
                # the event loop runs on this thread: its CPU against the whole process's (the render thread, the
                # frame pool, the encoders; and the clients when they run here), per frame the clients received
                cpu, loop = time.process_time(), time.thread_time()
                captures = graph_captures(avatar)[0]
                results, per_call, live = asyncio.run(run(avatar, n, args.idle, args.talk, microphone, batching,
                                                                      clients, ahead_frames(cfg.render)))
                frames = max(1, sum(r["frames"] for r in results))
                cpu_ms = [1e3 * (time.process_time() - cpu) / frames, 1e3 * (time.thread_time() - loop) / frames]
                figures[f"batch{batch}_streams{n}"] = {"results": results, "frames_per_call": per_call,
                                                       "cpu_ms_per_frame": cpu_ms[0],
                                                       "event_loop_ms_per_frame": cpu_ms[1], "live_frames": live}
                print(f"{batch:>6}{n:>8}{per_call:>12.2f}{summary(results)}{cpu_ms[0]:>28.1f}{cpu_ms[1]:>8.1f}",
                      flush=True)
                print(thread_line(live.pop("render_thread")), flush=True)
                print(captures_line(avatar, captures), flush=True)
                if live:  # stalls: audio came later than the spare allowed for (the viewer sees the picture stop)
                    print(f"{'':>14}live speech, all streams: {live.get('shown', 0)} frames shown, "
                          f"{live.get('stalls', 0)} stalls holding {live.get('held', 0)} frames for late audio, "
                          f"{live.get('dropped_silence', 0)} silent frames dropped, {live.get('skipped', 0)} skipped "
                          "after a stall", flush=True)
    finally:
        avatar.close()
        if clients is not None:
            clients.close()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"lookahead_s": LOOKAHEAD_SECONDS, "downscale": args.downscale,
                                         "client_processes": processes, "runs": figures}, indent=2))


if __name__ == "__main__":
    main()
