"""Evaluation of a trained subject on its held-back validation frames and on unrelated audio."""

from ernerf.apps.evaluation.figures import (EvalResult, Findings, Rendered, audio_sync_findings, evaluate_from_config,
                                            image_findings, lip_findings, resolve_cross_audio, resolve_target)

__all__ = ["EvalResult", "Findings", "Rendered", "audio_sync_findings", "evaluate_from_config", "image_findings",
           "lip_findings", "resolve_cross_audio", "resolve_target"]
