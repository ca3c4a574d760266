"""Score the same detections with pycocotools (what mixprec reports) and with Ultralytics' metric.

Input: the ``predictions.json`` (COCO results) and ``ground_truth.json`` (COCO annotations) that
``mixprec val ... save_json=True`` writes. Prints mAP50 and mAP50-95 from

- pycocotools COCOeval with its default 100 detections per image (mixprec's validation), and
  with 300 (Ultralytics' max_det);
- Ultralytics' own metric (``ultralytics.utils.metrics.ap_per_class``: 101-point linear
  interpolation of the precision envelope, integrated by trapezoids; predictions matched to labels
  by the validator's ``match_predictions``, all detections counted), run in ``--ul-python``.

    mixprec val model=runs/detect/train/weights/best.pt save_json=True
    python benchmarks/map_scorers.py runs/detect/val --ul-python /work/ulvenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

ULTRALYTICS_SCORER = r'''
import json, sys
import numpy as np, torch
from ultralytics.utils.metrics import ap_per_class, box_iou
from ultralytics.engine.validator import BaseValidator
gt, dets = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
iouv = torch.linspace(0.5, 0.95, 10)
holder = type("V", (), {"iouv": iouv})()
by_img_gt, by_img_det = {}, {}
for a in gt["annotations"]:
    by_img_gt.setdefault(a["image_id"], []).append(a)
for d in dets:
    by_img_det.setdefault(d["image_id"], []).append(d)
xyxy = lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]
tps, confs, pcls, tcls = [], [], [], []
for img in gt["images"]:
    g, d = by_img_gt.get(img["id"], []), by_img_det.get(img["id"], [])
    gc = torch.tensor([a["category_id"] for a in g], dtype=torch.float32)
    tcls.append(gc.numpy())
    if not d:
        continue
    dc = torch.tensor([x["category_id"] for x in d], dtype=torch.float32)
    conf = torch.tensor([x["score"] for x in d])
    if g:
        iou = box_iou(torch.tensor([xyxy(a["bbox"]) for a in g]), torch.tensor([xyxy(x["bbox"]) for x in d]))
        tp = np.asarray(BaseValidator.match_predictions(holder, dc, gc, iou)).astype(bool)
    else:
        tp = np.zeros((len(d), 10), bool)
    tps.append(tp); confs.append(conf.numpy()); pcls.append(dc.numpy())
res = ap_per_class(np.concatenate(tps), np.concatenate(confs), np.concatenate(pcls), np.concatenate(tcls))
ap = res[5]  # (classes, 10)
print(json.dumps({"map50": float(ap[:, 0].mean()), "map": float(ap.mean())}))
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="folder with predictions.json and ground_truth.json")
    ap.add_argument("--ul-python", default="", help="python of a venv with ultralytics")
    a = ap.parse_args()
    folder = Path(a.folder)
    gt = json.loads((folder / "ground_truth.json").read_text())
    dets = json.loads((folder / "predictions.json").read_text())

    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    for max_dets in (100, 300):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = gt
            coco.createIndex()
            ev = COCOeval(coco, coco.loadRes([dict(d) for d in dets]), "bbox")
            ev.params.maxDets = [1, 10, max_dets]
            ev.evaluate()
            ev.accumulate()
        prec = ev.eval["precision"][:, :, :, 0, -1]  # (iou, recall, class), all areas, max_dets
        m = float(prec[prec > -1].mean())
        m50 = float(prec[0][prec[0] > -1].mean())
        print(f"pycocotools, {max_dets} dets/image: mAP50 {m50:.4f}  mAP50-95 {m:.4f}")
    if a.ul_python:
        out = subprocess.run([a.ul_python, "-c", ULTRALYTICS_SCORER, str(folder / "ground_truth.json"),
                              str(folder / "predictions.json")], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"Ultralytics ap_per_class (all dets): mAP50 {r['map50']:.4f}  mAP50-95 {r['map']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
