"""Evaluation of a trained subject on its held-back frames: `frames` (the checkpoint and the rendered frames, or
another method's frames read from files), `figures` (image, face, lip-sync, blink and jitter figures), `report`
(metrics.json, PNGs, loggers), and `evaluate` (what `python evaluate.py` runs)."""

from ernerf.apps.evaluation.evaluate import evaluate_command, evaluate_from_config
from ernerf.apps.evaluation.report import EvalResult

__all__ = ["EvalResult", "evaluate_command", "evaluate_from_config"]
