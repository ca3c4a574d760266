"""det-n (mixprec) vs Ultralytics yolov8n.yaml and yolo26n.yaml, trained from scratch side by side.

Same YOLO-format dataset (mixprec's built-in ``shapes`` unless ``--data``), image size, batch,
epoch budget, CPU, FP32 (``amp=False``), ``workers``, thread count, ``nbs`` and warmup. Each
trainer runs in its own subprocess: mixprec with this interpreter, Ultralytics with
``--ul-python`` (a separate virtual environment; Ultralytics is never a mixprec dependency).
Nothing is downloaded: models are built from YAML, ``plots=False``, the data is local.

Reported per model: training images/s (training loop only: wall time of the training epochs,
validation excluded), training images per CPU second (process CPU time of the same epochs: with
``workers=0`` and one thread it moves much less than wall time when other jobs share the
machine) and mAP50 / mAP50-95 on the val split, all scored here by the same
pycocotools code (``mixprec.vision.metrics.coco_evaluate``) from each model's predictions
(conf 0.001, up to 100 per image), so the metric implementation is identical for all.

det-n uses mixprec's default ``cache="auto"`` (decoded, resized images kept in RAM when they fit;
with ``workers=0`` the cache fills during the first timed epoch, so its cost is in the images/s).
Ultralytics runs at its default ``cache=False``; a model name with ``@ram`` (e.g.
``yolov8n.yaml@ram``) runs it with ``cache="ram"`` as well.

    python benchmarks/detect_vs_ultralytics.py --ul-python /tmp/ulvenv/bin/python \
        --imgsz 160 --batch 16 --epochs 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIXPREC_CHILD = r'''
import json, sys, time, torch
from pathlib import Path
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
from mixprec.vision.cfg import TRAIN_KEYS, check_keys
from mixprec.vision.trainer import build, train_one_epoch
from mixprec.vision.predict import predict
args = check_keys(dict(model="det-n.yaml", data=cfg["data"], epochs=cfg["epochs"], imgsz=cfg["imgsz"],
                       batch=cfg["batch"], workers=cfg["workers"], amp=False, device="cpu",
                       project=cfg["out"], name="mixprec", verbose=False, plots=False,
                       close_mosaic=cfg["close_mosaic"], nbs=cfg["nbs"],
                       warmup_epochs=cfg["warmup_epochs"]), TRAIN_KEYS, "train")
torch.manual_seed(args["seed"])  # build() leaves seeding to its caller (train() forks the RNG)
st = build(args)
seen, t_train, cpu_train = 0, 0.0, 0.0
for epoch in range(cfg["epochs"]):
    st.epoch = epoch
    ds = st.train_loader.dataset
    ds.set_epoch(epoch); st.train_loader.sampler.set_epoch(epoch)
    ds.mosaic_on = epoch < cfg["epochs"] - cfg["close_mosaic"]
    t0, c0 = time.perf_counter(), time.process_time()
    train_one_epoch(st)
    t_train += time.perf_counter() - t0; cpu_train += time.process_time() - c0
    seen += len(ds)
model = st.ema.ema
preds = {}
for path in cfg["val_images"]:
    r = predict(model, path, imgsz=cfg["imgsz"], conf=0.001, iou=0.7, max_det=100)[0]
    preds[path] = [[*b.tolist(), float(s), int(c)] for b, s, c in zip(r.boxes, r.scores, r.classes)]
n = sum(p.numel() for p in model.parameters())
print("RESULT" + json.dumps({"images_per_s": seen / t_train, "train_s": t_train, "params": n,
                             "images_per_cpu_s": seen / cpu_train,
                             "torch": torch.__version__, "preds": preds}))
'''

ULTRALYTICS_CHILD = r'''
import json, os, sys, time
cfg = json.loads(sys.argv[1])
import torch
torch.set_num_threads(cfg["threads"])
from ultralytics import YOLO
model = YOLO(cfg["model"].split("@")[0])
times = {"t": 0.0, "t0": 0.0, "c": 0.0, "c0": 0.0, "seen": 0}
def start(trainer): times["t0"], times["c0"] = time.perf_counter(), time.process_time()
def end(trainer):
    times["t"] += time.perf_counter() - times["t0"]
    times["c"] += time.process_time() - times["c0"]
    times["seen"] += len(trainer.train_loader.dataset)
model.add_callback("on_train_epoch_start", start)
model.add_callback("on_train_epoch_end", end)
model.train(data=cfg["data"], epochs=cfg["epochs"], imgsz=cfg["imgsz"], batch=cfg["batch"],
            workers=cfg["workers"], device="cpu", amp=False, plots=False, val=False,
            project=cfg["out"], name=cfg["model"].replace(".yaml", "").replace("@", "_"),
            exist_ok=True, seed=0,
            close_mosaic=cfg["close_mosaic"], verbose=False, pretrained=False, nbs=cfg["nbs"],
            warmup_epochs=cfg["warmup_epochs"], cache="ram" if cfg["model"].endswith("@ram") else False)
preds = {}
for path in cfg["val_images"]:
    r = model.predict(path, imgsz=cfg["imgsz"], conf=0.001, iou=0.7, max_det=100, verbose=False,
                      device="cpu")[0]
    b = r.boxes
    preds[path] = [[*xy.tolist(), float(s), int(c)] for xy, s, c in
                   zip(b.xyxy.cpu(), b.conf.cpu(), b.cls.cpu())]
n = sum(p.numel() for p in model.model.parameters())
import ultralytics
print("RESULT" + json.dumps({"images_per_s": times["seen"] / times["t"], "train_s": times["t"],
                             "images_per_cpu_s": times["seen"] / times["c"],
                             "params": n, "torch": torch.__version__ + ", ultralytics "
                             + ultralytics.__version__, "preds": preds}))
'''


def _run(python: str, code: str, cfg: dict, env: dict) -> dict:
    proc = subprocess.run([python, "-c", code, json.dumps(cfg)], capture_output=True, text=True,
                          env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode or not line:
        raise RuntimeError(f"{cfg.get('model', 'det-n')} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT"):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ul-python", required=True, help="python of a venv with ultralytics")
    ap.add_argument("--data", default="shapes.yaml")
    ap.add_argument("--datasets-dir", default="datasets")
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--close-mosaic", type=int, default=1)
    ap.add_argument("--nbs", type=int, default=64, help="nominal batch (both trainers)")
    ap.add_argument("--warmup-epochs", type=float, default=3.0, help="warmup epochs (both)")
    ap.add_argument("--models", default="det-n,yolov8n.yaml,yolo26n.yaml")
    ap.add_argument("--train-limit", type=int, default=0, help="use the first N train images")
    ap.add_argument("--val-limit", type=int, default=0, help="use the first N val images")
    a = ap.parse_args()

    import numpy as np
    import torch

    from mixprec.hardware import describe_device
    from mixprec.vision.data import image_files, load_data_config
    from mixprec.vision.data.labels import scan
    from mixprec.vision.metrics import coco_evaluate, coco_ground_truth, coco_predictions

    data = load_data_config(a.data, a.datasets_dir)
    out = Path(tempfile.mkdtemp(prefix="detbench_"))
    if a.train_limit or a.val_limit:  # a subset, written as .txt image lists
        lists = {}
        for split, limit in (("train", a.train_limit), ("val", a.val_limit)):
            files = image_files(data.splits[split])
            files = files[:limit] if limit else files
            lists[split] = out / f"{split}.txt"
            lists[split].write_text("".join(f"{p}\n" for p in files))
        names = "".join(f"  {k}: {v}\n" for k, v in data.names.items())
        subset = out / "subset.yaml"
        subset.write_text(f"path: {out}\ntrain: {lists['train']}\nval: {lists['val']}\n"
                          f"names:\n{names}")
        data = load_data_config(subset)
    val_images = image_files(data.splits["val"])
    index = scan(val_images, data.nc)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "YOLO_OFFLINE": "1",
           "YOLO_CONFIG_DIR": str(out / "ulcfg")}
    cfg = {"data": str(data.yaml_path), "epochs": a.epochs, "imgsz": a.imgsz, "batch": a.batch,
           "workers": a.workers, "threads": a.threads, "out": str(out),
           "close_mosaic": a.close_mosaic, "nbs": a.nbs, "warmup_epochs": a.warmup_epochs,
           "val_images": [str(p) for p in index.images]}
    meta = [{"id": i + 1, "file_name": p.name, "width": w, "height": h}
            for i, (p, (w, h)) in enumerate(zip(index.images, index.shapes, strict=True))]
    gt = coco_ground_truth(meta, index.labels, data.names)
    rows = []
    for name in a.models.split(","):
        t0 = time.time()
        if name == "det-n":
            res = _run(sys.executable, MIXPREC_CHILD, cfg, env)
        else:
            res = _run(a.ul_python, ULTRALYTICS_CHILD, {**cfg, "model": name}, env)
        dets = []
        for i, p in enumerate(cfg["val_images"]):
            dets += coco_predictions(i + 1, np.array(res["preds"][p], dtype=np.float64).reshape(-1, 6))
        map50, map_, _ = coco_evaluate(gt, dets)
        rows.append((name, res["params"], res["images_per_s"], res["images_per_cpu_s"], map50, map_,
                     time.time() - t0))
        print(f"{name}: torch {res['torch']}")
        print(f"{name}: {res['images_per_s']:.2f} img/s ({res['images_per_cpu_s']:.2f} per CPU s), "
              f"mAP50 {map50:.4f}, mAP50-95 {map_:.4f}, load average {os.getloadavg()[0]:.1f}",
              flush=True)
    dev = describe_device("cpu")
    print(f"\nenvironment: torch {torch.__version__}, {dev.get('name', 'cpu')}, threads={a.threads}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"setup: data={a.data} ({len(image_files(data.splits['train']))} train / "
          f"{len(val_images)} val), imgsz={a.imgsz}, batch={a.batch}, epochs={a.epochs}, CPU, "
          f"FP32, workers={a.workers}, nbs={a.nbs}, warmup_epochs={a.warmup_epochs}, "
          f"close_mosaic={a.close_mosaic}, from scratch\n")
    base = {r[0]: r for r in rows}
    print("| model | params | train img/s | det-n speed ratio | img per CPU s | ratio (CPU) | mAP50 "
          "| mAP50-95 | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n, ips, ipc, m50, m, wall in rows:
        ratio = base["det-n"][2] / ips if "det-n" in base else float("nan")
        ratio_cpu = base["det-n"][3] / ipc if "det-n" in base else float("nan")
        print(f"| {name} | {n / 1e6:.2f}M | {ips:.2f} | {ratio:.2f}x | {ipc:.2f} | {ratio_cpu:.2f}x "
              f"| {m50:.4f} | {m:.4f} | {wall:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
