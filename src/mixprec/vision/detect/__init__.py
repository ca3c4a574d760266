"""Object detection, the first task of the vision trainer (``DetectTask``): YOLO-format data,
YAML-defined detectors, the YOLOv8 loss, COCO mAP with pycocotools, predictions."""

from mixprec.vision.detect.task import DetectTask, synthetic_boxes

__all__ = ["DetectTask", "synthetic_boxes"]
