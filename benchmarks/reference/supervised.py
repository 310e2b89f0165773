"""Plain supervised reference: a timm (or 1D) network trained from scratch on a medcl manifest and split.

    python benchmarks/reference/supervised.py --manifest M.csv --split RUN/split.csv --modality oct \
        --label-column label --classes normal,early,intermediate --steps 400 --out sup.json

AdamW with a one-cycle schedule, the modality's augmentations, a fixed number of optimiser steps (batches
drawn from a fresh permutation every epoch); prints and writes the test macro AUROC and the images/s.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from common import VOLUMES, augment, centre, encoder, load_split, macro_auroc
from torch import nn

ap = argparse.ArgumentParser()
for a, kw in [("--manifest", {}), ("--split", {}), ("--modality", {}), ("--label-column", {"default": "label"}),
              ("--classes", {}), ("--arch", {"default": "resnet18"}), ("--size", {"type": int, "default": 64}),
              ("--depth", {"type": int, "default": 16}),
              ("--output-stride", {"type": int, "default": 32}),
              ("--steps", {"type": int, "default": 400}), ("--batch", {"type": int, "default": 64}),
              ("--lr", {"type": float, "default": 2e-3}), ("--wd", {"type": float, "default": 0.05}),
              ("--seed", {"type": int, "default": 0}), ("--out", {"default": None})]:
    ap.add_argument(a, **kw)
args = ap.parse_args()
classes = args.classes.split(",")
data = load_split(Path(args.manifest), Path(args.split), args.label_column, classes, args.size, args.depth)
x, y, _ = data["train"]
multilabel = y.ndim == 2
torch.manual_seed(args.seed)
g = torch.Generator().manual_seed(args.seed)
net = encoder(args.modality, x.shape[1], args.arch, args.output_stride)
model = nn.Sequential(net, nn.Linear(net.dim, len(classes)))
opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
yt = torch.as_tensor(y, dtype=torch.float32 if multilabel else torch.long)
order, t0 = torch.empty(0, dtype=torch.long), time.perf_counter()
for _ in range(args.steps):
    if len(order) < args.batch:
        order = torch.cat([order, torch.randperm(len(x), generator=g)])
    idx, order = order[:args.batch], order[args.batch:]
    loss = loss_fn(model(augment(x[idx], args.modality, g)), yt[idx])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
seconds = time.perf_counter() - t0
model.eval()
xt, ytest, _ = data["test"]
with torch.no_grad():
    z = torch.cat([model(centre(xt[i:i + 256], args.modality)) for i in range(0, len(xt), 256)])
scores = (z.sigmoid() if multilabel else z.softmax(1)).numpy()
result = {"reference": "supervised", "modality": args.modality, "seed": args.seed,
          "arch": "cnn3d" if args.modality in VOLUMES else args.arch,
          "output_stride": args.output_stride,
          "steps": args.steps, "batch": args.batch, "test_auroc": macro_auroc(ytest, scores),
          "seconds": round(seconds, 1), "images_per_s": round(args.steps * args.batch / max(seconds, 1e-9), 1),
          "final_loss": float(loss.detach()), "n_train": len(x), "n_test": len(xt)}
print(json.dumps(result))
if args.out:
    Path(args.out).write_text(json.dumps(result, indent=2))
