"""Cross-speaker benchmark: does a trained subject's mouth follow any voice as well as its own?

    python bench/voices.py --subject trump [--data-root data] [--runs-root runs] [--stage head] [--downscale 4]
    python bench/voices.py --subject trump --quick     # a smoke run: 0.2 s per source, 4 held-back frames
    python bench/voices.py --subject trump --runs-root runs_seed0 runs_seed1 runs_seed2   # several runs, aggregated

The subject is driven, through evaluate.py's code, by
  own       its held-back audio: the validation frames (the clip's last 1/11), rendered with their tracked poses;
  <name>    every speech file of --audio (default: ../shared/data/audio/*.wav), other speakers;
  clip:<n>  the sound track of every other training clip (--other-clip; default: ../shared/data/train/*.mp4 but the
            subject's own source);
  tts       a sentence synthesized offline by espeak-ng (ernerf.apps.tts);
  own-train the subject's own audio.wav from its start (frames it was trained on): not foreign, a reference that
            tells a model whose mouth ignores every voice from one that follows its own voice only.
Per source: `corr`, the correlation of the rendered mouth opening with the audio's loudness (best lag within +-2
frames, as evaluate.py's sync_audio_corr); `spread`, the std of the mouth opening (a mouth that barely moves scores
low); `lmd` against the ground truth (own only); and each foreign source's ratios to `own`. Beside each correlation
its 95% interval for that many frames (Fisher's z; frames next to each other are not independent and the lag is
chosen, so the real uncertainty is larger: two single runs whose correlations differ by less than the intervals'
half-widths are no evidence either way). A table is printed and the figures written as JSON (default
bench/out/voices_<subject>.json). docs/evaluation.md, "Cross-speaker benchmark", has the tables and the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ernerf.cli import keep_torchmetrics_import_lean  # noqa: E402

keep_torchmetrics_import_lean()  # before the first Lightning import, as the entry scripts

from hydra import compose, initialize_config_dir  # noqa: E402

from datamodules.subject import read_au45  # noqa: E402
from ernerf.apps.checkpoints import audio_extractor  # noqa: E402
from ernerf.apps.evaluation.evaluate import cross_drive  # noqa: E402
from ernerf.apps.evaluation.figures import Findings, face_and_sync  # noqa: E402
from ernerf.apps.evaluation.frames import pose_options, render_subject, resolve_target  # noqa: E402
from ernerf.apps.inference import audio_kind, load_subject  # noqa: E402
from ernerf.errors import ErnerfError  # noqa: E402
from ernerf.systems.loading import loader_for  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
OUT = REPO / "bench" / "out"
TTS_TEXT = ("The weather changed quickly this morning, so we moved the meeting inside and talked about "
            "the budget, the schedule and the people who will join us next week.")
QUICK = {"max_seconds": 0.2, "max_frames": 4}
OWN_TRAIN = "own-train"
TARGET_RATIO = 0.8  # issue #17: every foreign voice at least 0.8x the subject's own corr and spread


@dataclass
class SourceScore:
    """What one driving source did to the mouth; None where it could not be measured (`note` says why)."""

    source: str
    frames: int
    corr: float | None
    spread: float | None
    lmd: float | None = None
    corr_gt: float | None = None  # own only: the ground truth's own mouth/loudness correlation on the same frames
    corr_interval: tuple[float, float] | None = None  # 95% interval of corr for `frames` frames (`correlation_interval`)
    corr_ratio: float | None = None
    spread_ratio: float | None = None
    note: str = ""

    @property
    def foreign(self) -> bool:
        """A voice the subject was not trained on (what the target is about)."""
        return self.source not in ("own", OWN_TRAIN)


def mouth_spread(mouth: np.ndarray | list[float] | None) -> float | None:
    """Std of a mouth-opening curve (eye-corner-distance units): 0 for a mouth that does not move."""
    if mouth is None or len(mouth) < 2:
        return None
    return float(np.std(np.asarray(mouth, np.float64)))


def correlation_interval(corr: float | None, frames: int, z: float = 1.96) -> tuple[float, float] | None:
    """The 95% interval of a correlation over `frames` independent pairs (Fisher's z transform); None below 4."""
    if corr is None or frames < 4:
        return None
    centre, half = np.arctanh(np.clip(corr, -0.999999, 0.999999)), z / np.sqrt(frames - 3)
    return float(np.tanh(centre - half)), float(np.tanh(centre + half))


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference; None when either is missing or the reference is not positive (no scale to compare with)."""
    if value is None or reference is None or reference <= 0:
        return None
    return value / reference


def add_ratios(scores: list[SourceScore]) -> list[SourceScore]:
    """Every other source's corr and spread as a ratio of the first's (the subject's own held-back audio); every
    correlation's interval."""
    own = scores[0]
    for s in scores:
        s.corr_interval = correlation_interval(s.corr, s.frames)
    for s in scores[1:]:
        s.corr_ratio, s.spread_ratio = ratio(s.corr, own.corr), ratio(s.spread, own.spread)
    return scores


def meets_target(scores: list[SourceScore], target: float = TARGET_RATIO) -> bool:
    """Every foreign source at least `target` x the subject's own corr and spread."""
    ratios = [r for s in scores[1:] if s.foreign for r in (s.corr_ratio, s.spread_ratio)]
    return bool(ratios) and all(r is not None and r >= target for r in ratios)


def from_findings(source: str, found: Findings, corr_key: str, mouth_key: str, frames: int) -> SourceScore:
    """A source's score from evaluate.py's findings (reasons kept for what is unavailable)."""
    notes = "; ".join(f"{k}: {v}" for k, v in found.unavailable.items() if k in (corr_key, "lmd"))
    return SourceScore(source, frames, found.values.get(corr_key), mouth_spread(found.curves.get(mouth_key)),
                       note=notes)


def evaluate_config(args: argparse.Namespace, runs_root: str) -> Any:
    """The real conf/evaluate.yaml for this subject and runs folder, as evaluate.py composes it."""
    overrides = [f"subject={args.subject}", f"paths.data_root={args.data_root}", f"paths.runs_root={runs_root}",
                 f"downscale={args.downscale}", f"device={args.device}", f"cross_max_seconds={args.max_seconds}"]
    if args.stage:
        overrides.append(f"stage_name={args.stage}")
    if args.max_frames:
        overrides.append(f"max_frames={args.max_frames}")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="evaluate", overrides=overrides)


def own_score(cfg: Any, renderer: Any, target: Any, audio_file: str) -> SourceScore:
    """The validation frames as evaluate.py renders and scores them."""
    rendered, data = render_subject(cfg, renderer, target.trained.stage.background, audio_file)
    found = face_and_sync(rendered, data, read_au45(data.layout.au))
    score = from_findings("own", found, "sync_audio_corr", "mouth_render", len(rendered.frames))
    score.lmd, score.corr_gt = found.values.get("lmd"), found.values.get("sync_audio_corr_gt")
    return score


def driving_sources(args: argparse.Namespace, data_root: Path, out_dir: Path) -> dict[str, Path]:
    """name -> audio file of every driving source but the held-back frames."""
    sources = {OWN_TRAIN: data_root / args.subject / "audio.wav"} if args.own_train else {}
    audios = args.audio if args.audio is not None else sorted((SHARED / "audio").glob("*.wav"))
    sources.update({Path(a).stem: Path(a) for a in audios})
    for clip in args.other_clip if args.other_clip is not None else default_other_clips(data_root / args.subject):
        sources[f"clip:{Path(clip).stem}"] = Path(clip)
    if args.tts:
        sources["tts"] = synthesized_speech(out_dir / "tts.wav", args.tts)
    return sources


def default_other_clips(subject_dir: Path) -> list[Path]:
    """The shared training clips other than the one the subject was made from (its meta.json `source`)."""
    meta = subject_dir / "meta.json"
    own = json.loads(meta.read_text()).get("source") if meta.is_file() else None
    own_name = Path(own).name if own else None
    return [p for p in sorted((SHARED / "train").glob("*.mp4")) if p.name != own_name]


def synthesized_speech(path: Path, text: str) -> Path:
    """`text` spoken by espeak-ng into a 16 kHz wav (written once)."""
    from ernerf.apps.tts import synthesize, write_wav
    from ernerf.constants import SAMPLE_RATE

    if not path.is_file():
        wav, rate = synthesize(text)
        write_wav(path, wav, rate, target_rate=SAMPLE_RATE)
    return path


def run(args: argparse.Namespace, runs_root: str) -> dict[str, Any]:
    """Render every source through the subject's checkpoint under `runs_root` and score it."""
    cfg = evaluate_config(args, runs_root)
    target = resolve_target(cfg.paths.runs_root, cfg.subject, cfg.run, cfg.stage_name)
    renderer = loader_for(cfg)(target.checkpoint, cfg.device)
    kind, dim = audio_kind(renderer.hparams)
    audio_file = target.trained.feature_file(kind)
    out_dir = Path(args.json).parent if args.json else OUT
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    scores = [own_score(cfg, renderer, target, audio_file)]
    print(f"[voices] own: {scores[0].frames} held-back frames in {time.perf_counter() - t0:.0f} s", flush=True)
    view = load_subject(Path(cfg.paths.data_root) / cfg.subject, audio_file, target.trained.stage.background,
                        downscale=cfg.downscale, **pose_options(cfg))
    extractor = audio_extractor(target.trained, kind, dim, cfg.audio_extractor)  # one for every source
    for name, path in driving_sources(args, Path(cfg.paths.data_root), out_dir).items():
        t0 = time.perf_counter()
        found = cross_drive(renderer, view, path, name, cfg.cross_max_seconds, extractor, progress=False)
        frames = len(found.curves.get(f"cross_energy_{name}", []))
        scores.append(from_findings(name, found, f"cross_sync_audio_corr_{name}", f"cross_mouth_render_{name}", frames))
        print(f"[voices] {name}: {frames} frames in {time.perf_counter() - t0:.0f} s", flush=True)
    add_ratios(scores)
    return {"subject": args.subject, "audio_kind": kind, "checkpoint": str(target.checkpoint),
            "downscale": cfg.downscale, "max_seconds": cfg.cross_max_seconds, "target_ratio": TARGET_RATIO,
            "meets_target": meets_target(scores), "sources": [asdict(s) for s in scores]}


def aggregate(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Every source's corr, spread and LMD over several runs' reports: mean, min and max of the runs that measured it
    (`runs`: how many), and how many runs met the target."""
    def summary(values: list[float | None]) -> dict[str, float | int] | None:
        measured = [v for v in values if v is not None]
        if not measured:
            return None
        return {"mean": float(np.mean(measured)), "min": min(measured), "max": max(measured), "runs": len(measured)}

    names = [s["source"] for s in reports[0]["sources"]]
    by_run = [{s["source"]: s for s in r["sources"]} for r in reports]
    return {"runs": len(reports), "meets_target": sum(bool(r["meets_target"]) for r in reports),
            "sources": [{"source": name, **{key: summary([run.get(name, {}).get(key) for run in by_run])
                                            for key in ("corr", "spread", "lmd")}} for name in names]}


def aggregate_table(summary: dict[str, Any]) -> str:
    """The aggregate of several runs as a markdown table: mean [min, max] per figure."""
    def cell(figure: dict[str, float] | None, spec: str) -> str:
        return "-" if figure is None else (f"{figure['mean']:{spec}} [{figure['min']:{spec}}, {figure['max']:{spec}}]"
                                           + ("" if figure["runs"] == summary["runs"] else f" ({figure['runs']} runs)"))

    lines = [f"over {summary['runs']} runs: mean [min, max]", "| source | corr | spread | LMD |", "|---|---|---|---|"]
    lines += [f"| {s['source']} | {cell(s['corr'], '.2f')} | {cell(s['spread'], '.4f')} | {cell(s['lmd'], '.2f')} |"
              for s in summary["sources"]]
    lines.append(f"runs meeting the target: {summary['meets_target']} of {summary['runs']}")
    return "\n".join(lines)


def table(report: dict[str, Any]) -> str:
    """The report as a markdown table."""
    def fmt(v: float | None, spec: str = ".2f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [f"{report['subject']} ({report['audio_kind']}), {report['checkpoint']}",
             "| source | frames | corr [95% interval] | spread | corr / own | spread / own | LMD |",
             "|---|---|---|---|---|---|---|"]
    for s in report["sources"]:
        interval = s.get("corr_interval")
        corr = fmt(s["corr"]) + (f" [{fmt(interval[0])}, {fmt(interval[1])}]" if interval else "")
        corr += f" (gt {fmt(s['corr_gt'])})" if s["corr_gt"] is not None else ""
        lines.append(f"| {s['source']} | {s['frames']} | {corr} | {fmt(s['spread'], '.4f')} | {fmt(s['corr_ratio'])} "
                     f"| {fmt(s['spread_ratio'])} | {fmt(s['lmd'])} |")
    lines.append(f"every foreign source >= {report['target_ratio']}x own corr and spread: {report['meets_target']}")
    notes = [f"{s['source']}: {s['note']}" for s in report["sources"] if s["note"]]
    return "\n".join(lines + notes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", required=True, help="a trained subject (checkpoints under --runs-root)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--runs-root", nargs="+", default=["runs"],
                        help="runs folder(s) holding the subject's checkpoints; several: each scored, then aggregated")
    parser.add_argument("--stage", help="the trained stage (default: the latest)")
    parser.add_argument("--audio", nargs="*", help="foreign speech files (default: ../shared/data/audio/*.wav)")
    parser.add_argument("--other-clip", nargs="*", help="other subjects' clips whose sound drives this one")
    parser.add_argument("--tts", default=TTS_TEXT, help="sentence for the synthetic voice ('' for none)")
    parser.add_argument("--own-train", action=argparse.BooleanOptionalAction, default=True,
                        help=f"also drive it with its own training audio ({OWN_TRAIN}, a reference)")
    parser.add_argument("--max-seconds", type=float, default=5.0, help="seconds of each foreign source rendered")
    parser.add_argument("--max-frames", type=int, help="only the first N held-back frames")
    parser.add_argument("--downscale", type=int, default=4, help="render 512/downscale crops (meshed at 512)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    parser.add_argument("--json", help="where the figures go (default bench/out/voices_<subject>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_seconds, args.max_frames = QUICK["max_seconds"], args.max_frames or QUICK["max_frames"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        reports = [run(args, runs_root) for runs_root in args.runs_root]
    except ErnerfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = Path(args.json) if args.json else OUT / f"voices_{args.subject}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = aggregate(reports) if len(reports) > 1 else None
    path.write_text(json.dumps(reports[0] if summary is None else {"runs": reports, "aggregate": summary}, indent=2))
    for report in reports:
        print(table(report))
    if summary is not None:
        print(aggregate_table(summary))
    print(f"figures: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
