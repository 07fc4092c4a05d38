"""A trained subject that talks live: one loaded model, a clock of output frames, speech that interrupts, idle between.

The head keeps walking the training poses forward and back on one clock whether the avatar speaks or not, so speech
starts and stops without a jump; only the audio windows change. Silence is the subject's own quietest training
window, which the model has seen with its mouth closed.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ernerf.apps.inference import (Compositor, CropRequest, FrameSource, LaunchedCrop, OutputOptions, RenderedCrops,
                                   Renderer, SubjectView, launch_crops, render_crops)
from ernerf.audio.features import frame_windows
from ernerf.constants import FEATURE_ROWS, FPS, SAMPLE_RATE, SMOOTH_WINDOW
from ernerf.errors import ErnerfError
from ernerf.io.audio import load_audio
from ernerf.postprocess.pasteback import HeadBox

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640 samples of 16 kHz audio per 40 ms video frame
# A live stream keeps a spare of audio beyond the look-ahead in hand, so packets that come late do not stall it: frames
# enough for the packets' own length and the lateness of most recent packets (LiveInput.spare_frames), measured over
# JITTER_HISTORY_SECONDS, one more for each stall the stream still had (Stream._spare), at most MAX_SPARE_FRAMES; a
# stream that has heard nothing yet assumes START_SPARE_FRAMES.
JITTER_HISTORY_SECONDS = 10.0
JITTER_QUANTILE = 0.95
START_SPARE_FRAMES = 2
MAX_SPARE_FRAMES = 6
# Frames of live audio beyond the spare that may wait unshown before the avatar skips to the newest (keeping the
# spare): the latency bound. A stall of the renderer (a graph capture, a busy machine) would otherwise leave the stream
# that much later for the rest of the session, as frames are shown at the rate speech arrives.
BEHIND_BEYOND_SPARE = 3
# Below that bound a stream gets back to its spare by dropping frames of silence: one whose 40 ms stay under this RMS
# (-40 dBFS, well under speech) is skipped while more than the spare waits, as a phone call's jitter buffer shortens
# pauses. So the lag a burst of packets or a stall left behind is gone by the next pause, not kept for the session.
QUIET_RMS = 0.01
# The features of output frame t look ahead of its first sample: its 8-frame attention window reaches frame t+3, whose
# middle is 3.5 frames on; that frame's 16 rows of 50 Hz features reach 7 rows past its middle, and the last row's
# 25 ms analysis window half of that again. What a live source must have sent before frame t can be rendered:
LOOKAHEAD_SECONDS = (SMOOTH_WINDOW - SMOOTH_WINDOW // 2 - 0.5) / FPS + (FEATURE_ROWS // 2 - 1) / 50 + 0.0125
# An uploaded file is said in parts of this length, each made while the one before is said (LiveAvatar.utterances),
# with this much audio on each side of a part for its windows (the log-mel's windows reach 4 frames).
UPLOAD_PART_SECONDS = 10.0
PART_CONTEXT_FRAMES = 10


def speech_frames(wav: np.ndarray) -> int:
    """Output frames 16 kHz speech fills (at least one)."""
    return max(1, int(round(len(wav) / SAMPLES_PER_FRAME)))


def part_frames(num_frames: int, part_seconds: float = UPLOAD_PART_SECONDS) -> list[tuple[int, int]]:
    """The frames [first, stop) of each part of `num_frames` frames said in parts of `part_seconds`."""
    step = max(1, int(round(part_seconds * FPS)))
    return [(first, min(num_frames, first + step)) for first in range(0, num_frames, step)]


@dataclass(frozen=True)
class FrameRequest:
    """One output frame a stream asks for: its clock tick, audio window [8, 16, C], its 40 ms of audio [640], the
    training frame it shows and that frame's background (`LiveAvatar.background`, being made on the avatar's pool)."""

    tick: int
    window: np.ndarray
    pcm: np.ndarray
    index: int
    background: Future


@dataclass(frozen=True)
class Utterance:
    """What the avatar says: an audio window per output frame and the matching 16 kHz audio."""

    windows: np.ndarray  # float32 [N, 16, C]
    pcm: np.ndarray  # int16 [N * SAMPLES_PER_FRAME]

    @property
    def num_frames(self) -> int:
        return len(self.windows)


def quietest_window(features: np.ndarray, audio: Path | None) -> np.ndarray:
    """The training window [16, C] of the quietest frame of the subject's audio (the middle one without audio)."""
    if audio is None or not Path(audio).is_file():
        return features[len(features) // 2]
    wav = load_audio(audio, sr=SAMPLE_RATE)
    n = min(len(features), len(wav) // SAMPLES_PER_FRAME)
    frames = wav[: n * SAMPLES_PER_FRAME].reshape(n, SAMPLES_PER_FRAME).astype(np.float64)
    return features[int(np.argmin((frames ** 2).mean(axis=1)))]


def pool_threads(setting: int | str) -> int:
    """Threads of a live avatar's pool (conf/serve.yaml `render.cpu_workers`): a positive number, or `auto`, every
    CPU core but the one the model's thread keeps busy."""
    if setting == "auto":
        return max(1, (os.cpu_count() or 1) - 1)
    if isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1:
        return setting
    raise ErnerfError(f"render.cpu_workers={setting!r}: give a number of threads (1 or more) or auto.")


class LiveAvatar:
    """The loaded subject: output frame `tick` is the head at that point of the pose clock, saying `window`, pasted
    into the original video frame it belongs to. The model runs on one thread at a time (`frame`, `frames` and
    `render_heads` are called from the render thread only); the work around it, a frame's background before it and
    its pasting after it, runs on `cpu`, a pool shared by every stream, so the model's thread does nothing else."""

    def __init__(self, renderer: Renderer, subject: SubjectView, options: OutputOptions, extractor: Any,
                 idle_window: np.ndarray, cpu_workers: int | str = "auto") -> None:
        self.renderer, self.subject, self.extractor = renderer, subject, extractor
        self.idle_window = np.asarray(idle_window, np.float32)  # [16, C]
        self.compositor = Compositor(subject, HeadBox.load(subject.layout.head_bbox), options)
        self.sources = FrameSource(subject.layout.video)  # for `frame` and `frames`; each stream has its own
        self.period = max(1, 2 * (len(subject.poses) - 1))
        self.cpu = ThreadPoolExecutor(pool_threads(cpu_workers), thread_name_prefix="ernerf-live-cpu")

    def utterance(self, wav: np.ndarray) -> Utterance:
        """Audio windows for 16 kHz mono speech (computed on the caller's thread)."""
        n = speech_frames(wav)
        return self._part(np.asarray(wav, np.float32), n, 0, n)

    def utterances(self, wav: np.ndarray, part_seconds: float = UPLOAD_PART_SECONDS) -> Iterator[Utterance]:
        """Long speech as utterances of `part_seconds`, each made when asked for (on the caller's thread): a long
        file starts once its first part is made, and only the parts made ahead are held. Each part's windows are
        computed from its audio and PART_CONTEXT_FRAMES around it, so they are the whole file's windows wherever the
        features reach no further (the log-mel: a few frames); HuBERT-like features see that context, as live."""
        wav = np.asarray(wav, np.float32)
        n = speech_frames(wav)
        for first, stop in part_frames(n, part_seconds):
            yield self._part(wav, n, first, stop)

    def _part(self, wav: np.ndarray, n: int, first: int, stop: int) -> Utterance:
        """Frames [first, stop) of the `n` frames of `wav`: windows from the audio around them, and their audio."""
        lo, hi = max(0, first - PART_CONTEXT_FRAMES), min(n, stop + PART_CONTEXT_FRAMES)
        around = wav[lo * SAMPLES_PER_FRAME: len(wav) if hi == n else hi * SAMPLES_PER_FRAME]
        windows = frame_windows(self.extractor(around), hi - lo, FPS)[first - lo: stop - lo]
        pcm = np.zeros((stop - first) * SAMPLES_PER_FRAME, np.int16)
        audio = wav[first * SAMPLES_PER_FRAME: stop * SAMPLES_PER_FRAME][:len(pcm)]
        pcm[:len(audio)] = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
        return Utterance(windows.astype(np.float32), pcm)

    def frames(self, wanted: list[tuple[int, np.ndarray]]) -> list[np.ndarray]:
        """Output frames of several (tick, window) pairs, their heads rendered in one call of the model."""
        indices = [self.training_frame(tick) for tick, _ in wanted]
        heads = self.render_heads([(index, window, self.background(index))
                                   for index, (_, window) in zip(indices, wanted)])
        return [self.paste(raw, index, self.sources) for raw, index in zip(heads, indices)]

    def training_frame(self, tick: int) -> int:
        """The training frame shown at clock `tick`: forward through them, then back (ernerf.postprocess.motion)."""
        phase = tick % self.period
        return phase if phase < len(self.subject.poses) else self.period - phase

    def background(self, index: int) -> np.ndarray:
        """What the head of training frame `index` is rendered over: [H, W, 3] uint8."""
        return self.subject.background(index)

    def render_heads(self, heads: list[tuple[int, np.ndarray, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Rendered head crops of several (training frame, audio window, background) in one call of the model."""
        return render_crops(self.renderer, self.subject, self._requests(heads), self.compositor.options.rendered)

    def launch_heads(self, heads: list[tuple[int, np.ndarray, np.ndarray]]) -> LaunchedCrop | RenderedCrops:
        """`render_heads`, a single head only launched on the device: its `result()` comes once the caller has
        launched or prepared the next frame (`launch_crops`)."""
        return launch_crops(self.renderer, self.subject, self._requests(heads), self.compositor.options.rendered)

    def _requests(self, heads: list[tuple[int, np.ndarray, np.ndarray]]) -> list[CropRequest]:
        requests = []
        for index, window, bg in heads:
            eye = None if self.subject.eye is None else float(self.subject.eye[index])
            requests.append(CropRequest(self.subject.poses[index], eye, window, bg,
                                        frame=self.subject.coded_frame(index)))
        return requests

    def paste(self, raw: dict[str, np.ndarray], index: int, sources: FrameSource) -> np.ndarray:
        """A rendered crop pasted into the original video frame of training frame `index`, read from `sources`."""
        img_id = int(self.subject.img_ids[index])
        source: Future = Future()
        source.set_result(sources.get(img_id))
        return self.compositor.compose(raw, source, img_id)[0]

    def open_sources(self) -> FrameSource:
        """A decoder of the original video of its own: a stream walks it in order, so each block decodes once."""
        return FrameSource(self.subject.layout.video, keep=2)

    def close(self) -> None:
        self.cpu.shutdown(wait=False, cancel_futures=True)
        self.sources.close()


class LiveInput:
    """Speech that arrives as it is spoken (a microphone), 16 kHz samples appended as they come. Frame t (counted from
    the first sample) can be rendered once its look-ahead has arrived; its windows are computed from the audio around
    it alone, so the work per frame is bounded, and only the last `keep_seconds` are kept."""

    CONTEXT = 10  # frames of audio before a window's first frame: the features there see no padding

    def __init__(self, extractor: Any, keep_seconds: float = 10.0, spare_frames: int | None = None) -> None:
        self.extractor, self.keep = extractor, int(keep_seconds * SAMPLE_RATE)
        self._audio = np.zeros(0, np.float32)
        self._offset = 0  # stream sample index of self._audio[0]
        self._lock = threading.Lock()
        self.lookahead = int(np.ceil(LOOKAHEAD_SECONDS * SAMPLE_RATE))
        self.fixed_spare = spare_frames  # None: follow the packets' lateness (spare_frames)
        # recent appends: (arrival time, seconds of audio, arrival time less the stream time of the append's last sample)
        self._arrivals: deque[tuple[float, float, float]] = deque()

    @property
    def received(self) -> int:
        """Samples received so far."""
        with self._lock:
            return self._offset + len(self._audio)

    def append(self, wav: np.ndarray, arrived: float | None = None) -> None:
        """Audio that came at `arrived` (time.monotonic(); default: now)."""
        arrived = time.monotonic() if arrived is None else arrived
        with self._lock:
            self._audio = np.concatenate([self._audio, np.asarray(wav, np.float32)])
            if len(self._audio) > self.keep:
                self._offset += len(self._audio) - self.keep
                self._audio = self._audio[-self.keep:]
            end = (self._offset + len(self._audio)) / SAMPLE_RATE
            self._arrivals.append((arrived, len(wav) / SAMPLE_RATE, arrived - end))
            while self._arrivals[0][0] < arrived - JITTER_HISTORY_SECONDS:
                self._arrivals.popleft()

    def spare_frames(self) -> int:
        """Frames of audio beyond the look-ahead a stream following this input keeps in hand: what arrives in one
        packet and the lateness of most packets (JITTER_QUANTILE of the last JITTER_HISTORY_SECONDS, against the
        earliest of them), in frames, plus one for the frame clock's phase against the packets'."""
        if self.fixed_spare is not None:
            return self.fixed_spare
        with self._lock:
            arrivals = np.array(self._arrivals, np.float64).reshape(-1, 3)
        if len(arrivals) < 2:
            return START_SPARE_FRAMES
        packet = float(np.median(arrivals[:, 1]))
        late = float(np.quantile(arrivals[:, 2] - arrivals[:, 2].min(), JITTER_QUANTILE))
        return int(min(MAX_SPARE_FRAMES, 1 + np.floor((packet + late) * FPS)))

    def ready(self, t: int) -> bool:
        """Whether frame t's windows can be computed (its look-ahead has arrived)."""
        return self.received >= t * SAMPLES_PER_FRAME + self.lookahead

    def quiet(self, t: int) -> bool:
        """Whether frame t's 40 ms of audio are silence (RMS under QUIET_RMS)."""
        audio = self._segment(t * SAMPLES_PER_FRAME, (t + 1) * SAMPLES_PER_FRAME)
        return float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) < QUIET_RMS

    def _segment(self, start: int, stop: int) -> np.ndarray:
        """Stream samples [start, stop), zeros where none arrived or they were dropped."""
        out = np.zeros(stop - start, np.float32)
        with self._lock:
            lo, hi = max(start, self._offset), min(stop, self._offset + len(self._audio))
            if hi > lo:
                out[lo - start: hi - start] = self._audio[lo - self._offset: hi - self._offset]
        return out

    def window(self, t: int) -> np.ndarray:
        """The attention window of frame t [8, 16, C], from the audio of frames t-4-CONTEXT .. t+3 and the look-ahead."""
        half = SMOOTH_WINDOW // 2
        first = t - half - self.CONTEXT  # frame the computed audio starts at (a frame boundary: 640 = 2 hops)
        audio = self._segment(first * SAMPLES_PER_FRAME, t * SAMPLES_PER_FRAME + self.lookahead + SAMPLES_PER_FRAME)
        count = half + self.CONTEXT + SMOOTH_WINDOW - half
        windows = frame_windows(self.extractor(audio), count, FPS)  # frames first .. t+3
        return windows[-SMOOTH_WINDOW:].astype(np.float32)

    def pcm(self, t: int) -> np.ndarray:
        """The int16 audio of frame t [640]."""
        audio = self._segment(t * SAMPLES_PER_FRAME, (t + 1) * SAMPLES_PER_FRAME)
        return (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)


class Stream:
    """One listener's avatar: frame after frame on its own clock, saying its utterances one after another, idle
    otherwise. `say` and `queue` may be called from any thread; `say` interrupts what is being said at the next frame.

    The attention window of a frame is its 4 past rows, what the last 4 frames said (speech, live speech or silence),
    and its own and 3 future rows, taken from the utterance being said and those queued after it (idle beyond): so
    queued utterances follow each other without a gap, and speech starts, stops and is interrupted without a jump.
    """

    def __init__(self, avatar: LiveAvatar, start_tick: int = 0) -> None:
        self.avatar, self.tick = avatar, start_tick
        self._lock = threading.Lock()
        self._speech: deque[Utterance] = deque()  # what is being said, then what follows it
        self._position = 0  # frame of the utterance being said that comes next
        self._past: deque[np.ndarray] = deque([avatar.idle_window] * (SMOOTH_WINDOW // 2), SMOOTH_WINDOW // 2)
        self._live: LiveInput | None = None
        self._live_frame = 0  # frame of the live input that comes next
        self._held: np.ndarray | None = None  # the last live window, held while the next one's audio is late
        self._flowing = False
        self._sources: FrameSource | None = None  # this stream's decoder of the original video, opened when first used
        self._next_background: Future | None = None  # the background of frame `tick`, made ahead
        self._closed = False
        self._live_counts: Counter[str] = Counter()  # live_figures(); updated on the render thread
        self._holding = 0  # frames held since the live input last flowed
        # frames of spare added after stalls (the input's own estimate sees its packets' lateness, not how unevenly
        # this stream is asked for frames), one per stall, one less after each JITTER_HISTORY_SECONDS without one
        self._stall_spare, self._calm_since = 0, 0.0

    @property
    def speaking(self) -> bool:
        with self._lock:
            return bool(self._speech)

    def say(self, utterance: Utterance) -> None:
        """Speak `utterance` from the next frame on (what was being said, and what was queued, is dropped)."""
        with self._lock:
            self._speech, self._position = deque([utterance]), 0

    def queue(self, utterance: Utterance) -> None:
        """Speak `utterance` once what is being said and queued has been said (at the next frame if nothing is)."""
        with self._lock:
            if not self._speech:
                self._position = 0
            self._speech.append(utterance)

    def frames_ahead(self) -> int:
        """Frames of speech said or queued that have not been shown yet."""
        with self._lock:
            return sum(u.num_frames for u in self._speech) - self._position

    def listen(self, live: LiveInput | None) -> None:
        """Follow speech as it arrives (None: stop); an utterance given by `say` is spoken first."""
        with self._lock:
            self._live, self._live_frame, self._held, self._flowing, self._holding = live, 0, None, False, 0
            self._stall_spare = 0

    def _live_window(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The next frame of the live input once its look-ahead has arrived; while it has not, the last live window
        held with no sound (a late packet delays the speech, it neither garbles it nor snaps the mouth shut). None:
        no live input, or it has not started."""
        with self._lock:
            live, t, held = self._live, self._live_frame, self._held
        if live is None:
            return None
        spare = self._spare(live)
        # (re)start only with the spare in hand, then go on as long as the look-ahead itself is in
        if not live.ready(t + (0 if held is not None and self._flowing else spare)):
            self._flowing = False
            self._holding += held is not None
            return None if held is None else (held, np.zeros(SAMPLES_PER_FRAME, np.int16))
        counts = Counter(shown=1)
        if self._holding:  # the late audio came: that was a stall
            counts.update(held=self._holding, stalls=1)
            self._holding = 0
            self._stall_spare, self._calm_since = self._stall_spare + 1, time.monotonic()
        newest = (live.received - live.lookahead) // SAMPLES_PER_FRAME  # the newest frame that could render now
        if newest - t > spare + BEHIND_BEYOND_SPARE:  # fell behind (a stall, an utterance said meanwhile): go on from
            counts["skipped"] += newest - spare - t  # what is said now
            t = newest - spare
        elif newest - t > spare and live.quiet(t):  # more than the spare waits: drop a frame of silence
            counts["dropped_silence"] += 1
            t += 1
        window = live.window(t)
        with self._lock:
            self._live_frame, self._held, self._flowing = t + 1, window, True
            self._live_counts.update(counts)
        return window, live.pcm(t)

    def live_figures(self) -> Counter[str]:
        """How live speech fared so far: frames shown; stalls and the frames they held for late audio; frames of
        silence dropped; frames skipped after a stall (frames held until the input ended are not counted: the
        sender stopped)."""
        with self._lock:
            return Counter(self._live_counts)

    def _spare(self, live: LiveInput) -> int:
        """Frames of live audio this stream keeps in hand: the input's estimate and what stalls added."""
        if self._stall_spare and time.monotonic() - self._calm_since > JITTER_HISTORY_SECONDS:
            self._stall_spare, self._calm_since = self._stall_spare - 1, time.monotonic()
        return min(MAX_SPARE_FRAMES, live.spare_frames() + self._stall_spare)

    def _said_window(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The next frame of what is being said, and advance; None when nothing is. Called with the lock held."""
        if self._speech and self._position >= self._speech[0].num_frames:
            self._speech.popleft()  # said to its end: the next one (if any) goes on at once
            self._position = 0
        if not self._speech:
            return None
        utterance, t = self._speech[0], self._position
        coming = [utterance.windows[t:t + SMOOTH_WINDOW - SMOOTH_WINDOW // 2]]
        for following in list(self._speech)[1:]:
            if sum(map(len, coming)) >= SMOOTH_WINDOW - SMOOTH_WINDOW // 2:
                break
            coming.append(following.windows)
        window = self._with_past(np.concatenate(coming))
        pcm = utterance.pcm[t * SAMPLES_PER_FRAME:(t + 1) * SAMPLES_PER_FRAME]
        self._position += 1
        return window, pcm

    def _with_past(self, coming: np.ndarray) -> np.ndarray:
        """The attention window [8, 16, C]: the last frames' rows, then `coming` [>= 0, 16, C], idle after it."""
        future = SMOOTH_WINDOW - SMOOTH_WINDOW // 2
        idle = np.repeat(self.avatar.idle_window[None], max(0, future - len(coming)), 0)
        return np.concatenate([np.stack(self._past), coming[:future], idle]).astype(np.float32)

    def next_window(self) -> tuple[np.ndarray, np.ndarray]:
        """(audio window [8, 16, C], int16 audio [640]) of the next frame, and advance."""
        with self._lock:
            said = self._said_window()
        if said is None:
            said = self._live_window()
        if said is None:
            with self._lock:
                said = self._with_past(self.avatar.idle_window[None][:0]), np.zeros(SAMPLES_PER_FRAME, np.int16)
        window, pcm = said
        with self._lock:
            self._past.append(window[SMOOTH_WINDOW // 2])  # this frame's own row: the past of the next ones
        return window, pcm

    def next_request(self) -> FrameRequest:
        """What the next 40 ms are made of (tick, audio window, audio, training frame and its background), and
        advance; rendered by whoever asked. The background of the frame after it starts being made now."""
        if self._closed:
            raise ErnerfError("this stream was closed: its client has gone")
        window, pcm = self.next_window()
        index = self.avatar.training_frame(self.tick)
        background = self._next_background or self.avatar.cpu.submit(self.avatar.background, index)
        request = FrameRequest(self.tick, window, pcm, index, background)
        self.tick += 1
        self._next_background = self.avatar.cpu.submit(self.avatar.background, self.avatar.training_frame(self.tick))
        return request

    @property
    def sources(self) -> FrameSource:
        """This stream's decoder of the original video (its frames are pasted one at a time, in order)."""
        if self._closed:
            raise ErnerfError("this stream was closed: its client has gone")
        if self._sources is None:
            self._sources = self.avatar.open_sources()
        return self._sources

    def close(self) -> None:
        """Free the stream's decoder and the background made ahead. A frame of it being pasted meanwhile fails, and
        one asked for later is refused: nobody waits for them."""
        self._closed = True
        if self._next_background is not None:
            self._next_background.cancel()
        if self._sources is not None:
            self._sources.close()
            self._sources = None

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        """(frame [H, W, 3] uint8, int16 audio [640]) of the next 40 ms, rendered alone."""
        request = self.next_request()
        head = self.avatar.render_heads([(request.index, request.window, request.background.result())])[0]
        return self.avatar.paste(head, request.index, self.avatar.sources), request.pcm
