"""Prediction on user images: `Predictor` (segment-anything style: load once, predict many)."""
from lavt.inference.predictor import Prediction, Predictor, load_image
from lavt.visualize import overlay  # the mask overlay, exported here since before lavt.visualize existed

__all__ = ["Prediction", "Predictor", "load_image", "overlay"]
