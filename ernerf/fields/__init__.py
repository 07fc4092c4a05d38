"""ernerf.fields: fields map points (+ conditioning) to FieldOutputs; they know nothing about rendering."""

from ernerf.fields.base import MLP, FieldOutputs, trunc_exp
from ernerf.fields.face import FaceCondition, FaceField

__all__ = ["MLP", "FaceCondition", "FaceField", "FieldOutputs", "trunc_exp"]
