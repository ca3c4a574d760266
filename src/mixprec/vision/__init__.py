"""The vision trainer built on the mixprec engine: ``Model("det-n.yaml").train(...)``.

``trainer`` is the one training loop of every task (``build``, ``train_one_epoch``, ``train``);
``task`` is the seam (``Task``, the ``TASKS`` registry); ``detect`` is the detection task, whose
parts are usable on their own: ``models`` (YAML-defined ``DetectionModel``), ``data`` (YOLO
format, built-in datasets), ``loss`` (``DetectionLoss``), ``metrics``/``validate`` (COCO mAP with
pycocotools), ``predict``. ``workloads`` hands a task's model to ``mixprec.bench``/``diagnose``.
"""

from mixprec.vision.model import Model

__all__ = ["Model"]
