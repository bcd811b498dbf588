"""Prediction on user images: `Predictor` (segment-anything style: load once, predict many)."""
from lavt.inference.predictor import Prediction, Predictor, load_image
from lavt.visualize import overlay  # kept importable from here: part of this package's public names

__all__ = ["Prediction", "Predictor", "load_image", "overlay"]
