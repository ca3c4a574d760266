"""The detection trainer built on the mixprec engine: ``Model("det-n.yaml").train(...)``.

Parts, usable on their own: ``models`` (YAML-defined ``DetectionModel``), ``data`` (YOLO format,
built-in datasets), ``loss`` (``DetectionLoss``), ``metrics``/``validate`` (COCO mAP with
pycocotools), ``trainer`` (``build``, ``train_one_epoch``, ``train``), ``predict``.
"""

from mixprec.vision.model import Model

__all__ = ["Model"]
