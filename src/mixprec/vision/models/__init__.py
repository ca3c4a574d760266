"""YAML-defined detection models."""

from mixprec.vision.models.detector import DetectionModel, load_model_yaml, model_info

__all__ = ["DetectionModel", "load_model_yaml", "model_info"]
