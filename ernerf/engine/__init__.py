"""How the model's steps and renders execute (eager, CUDA graphs, compiled, TF32, data-parallel reduction): the
execution engine, configured by conf/engine/ and applied from the trainer side or where a checkpoint is loaded."""

from ernerf.engine.engine import ExecutionEngine, tf32_matmuls

__all__ = ["ExecutionEngine", "tf32_matmuls"]
