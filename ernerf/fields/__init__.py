"""ernerf.fields: fields map points (+ conditioning) to FieldOutputs; they know nothing about rendering."""

from ernerf.fields.base import MLP, FieldOutputs, trunc_exp
from ernerf.fields.face import FaceCondition, FaceField
from ernerf.fields.torso import TorsoField, TorsoOutputs, pixel_coords, pose_keypoints

__all__ = ["MLP", "FaceCondition", "FaceField", "FieldOutputs", "TorsoField", "TorsoOutputs", "pixel_coords",
           "pose_keypoints", "trunc_exp"]
