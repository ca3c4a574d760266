"""3D volume segmentation (task ``segment3d``): NIfTI data (Decathlon folders/``dataset.json`` or a
data YAML), the built-in ``organs3d``/``lesions3d`` sets, residual 3D U-Nets, Dice+CE loss,
patch sampling, sliding-window inference, Dice/HD95 metrics and NIfTI predictions."""

from mixprec.vision.segment3d.task import Segment3DTask

__all__ = ["Segment3DTask"]
