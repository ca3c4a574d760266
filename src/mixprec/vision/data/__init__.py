"""YOLO-format data: data YAML, label checks and cache, augmentation, built-in datasets."""

from mixprec.vision.data.config import DataConfig, image_files, label_path, load_data_config
from mixprec.vision.data.dataset import AugmentConfig, DetectionDataset, build_dataloader, collate
from mixprec.vision.data.labels import LabelIndex, parse_label_text, scan

__all__ = ["AugmentConfig", "DataConfig", "DetectionDataset", "LabelIndex", "build_dataloader",
           "collate", "image_files", "label_path", "load_data_config", "parse_label_text", "scan"]
