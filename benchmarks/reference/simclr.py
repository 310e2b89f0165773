"""Plain SimCLR reference (Chen et al. 2020): contrastive pretraining, then a linear probe, on a medcl manifest.

    python benchmarks/reference/simclr.py --manifest M.csv --split RUN/split.csv --modality oct \
        --label-column label --classes normal,early,intermediate --steps 400 --out simclr.json

Two augmented views per training sample, a 2-layer projector, NT-Xent over the 2B views (temperature T),
AdamW with a one-cycle schedule; then the frozen encoder's features of the train and test splits go to a
patient-grouped, cross-validated logistic regression; the same network untrained gets the same probe
(``random_probe_auroc``).
"""

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import VOLUMES, augment, centre, encoder, linear_probe, load_split
from torch import nn

ap = argparse.ArgumentParser()
for a, kw in [("--manifest", {}), ("--split", {}), ("--modality", {}), ("--label-column", {"default": "label"}),
              ("--classes", {}), ("--arch", {"default": "resnet18"}), ("--size", {"type": int, "default": 64}),
              ("--depth", {"type": int, "default": 16}),
              ("--output-stride", {"type": int, "default": 32}),
              ("--steps", {"type": int, "default": 400}), ("--batch", {"type": int, "default": 64}),
              ("--lr", {"type": float, "default": 2e-3}), ("--wd", {"type": float, "default": 1e-4}),
              ("--temperature", {"type": float, "default": 0.2}), ("--seed", {"type": int, "default": 0}),
              ("--out", {"default": None})]:
    ap.add_argument(a, **kw)
args = ap.parse_args()
data = load_split(Path(args.manifest), Path(args.split), args.label_column, args.classes.split(","), args.size,
                  args.depth)
x = data["train"][0]
torch.manual_seed(args.seed)
g = torch.Generator().manual_seed(args.seed)
net = encoder(args.modality, x.shape[1], args.arch, args.output_stride)
init = copy.deepcopy(net)  # the same network untrained: the random-init probe beside the SimCLR one
proj = nn.Sequential(nn.Linear(net.dim, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 128))
params = list(net.parameters()) + list(proj.parameters())
opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.wd)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(1, args.steps), pct_start=0.1)
order, t0, loss = torch.empty(0, dtype=torch.long), time.perf_counter(), torch.tensor(float("nan"))
for _ in range(args.steps):
    if len(order) < args.batch:
        order = torch.cat([order, torch.randperm(len(x), generator=g)])
    idx, order = order[:args.batch], order[args.batch:]
    views = torch.cat([augment(x[idx], args.modality, g), augment(x[idx], args.modality, g)])
    z = F.normalize(proj(net(views)), dim=1)
    sim = z @ z.T / args.temperature
    sim.fill_diagonal_(float("-inf"))  # a view is not its own positive or negative
    n = len(idx)
    loss = F.cross_entropy(sim, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
seconds = time.perf_counter() - t0


def features(model: nn.Module) -> dict:
    model.eval()
    with torch.no_grad():
        return {s: torch.cat([model(centre(v[0][i:i + 256], args.modality)) for i in range(0, len(v[0]), 256)]).numpy()
                for s, v in data.items()}


feats, feats0 = features(net), features(init)
(_, y_train, groups), (_, y_test, _) = data["train"], data["test"]
result = {"reference": "simclr", "modality": args.modality, "seed": args.seed,
          "arch": "cnn3d" if args.modality in VOLUMES else args.arch,
          "output_stride": args.output_stride,
          "steps": args.steps, "batch": args.batch, "temperature": args.temperature,
          "probe_auroc": linear_probe(feats["train"], y_train, groups, feats["test"], y_test),
          "random_probe_auroc": linear_probe(feats0["train"], y_train, groups, feats0["test"], y_test),
          "seconds": round(seconds, 1),
          "images_per_s": round(2 * args.steps * args.batch / max(seconds, 1e-9), 1) if args.steps else None,
          "final_loss": float(loss.detach()), "n_train": len(x), "n_test": len(y_test)}
print(json.dumps(result))
if args.out:
    Path(args.out).write_text(json.dumps(result, indent=2))
