"""Prediction on user images: `Predictor` (segment-anything style: load once, predict many)."""
from lavt.inference.predictor import Prediction, Predictor, load_image, overlay

__all__ = ["Prediction", "Predictor", "load_image", "overlay"]
