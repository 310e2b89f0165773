"""Worker launched by test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo, CPU).

Every rank builds the same seeded global batch and the same tiny projection, then:

1. full batch, one process (gather off): loss and parameter gradients — the reference;
2. its own slice of the batch with ``gather_distributed=True``: backward, then gradients averaged over
   ranks exactly as DDP does, loss averaged over ranks.

Rank 0 writes the largest differences (and a direct check of gather_with_grad's backward) as JSON.
"""

from __future__ import annotations

import json
import sys

import torch

from medcl import distributed as dist
from medcl.losses import MoCoV3Loss, NTXentLoss, SupConLoss


def main(out_path: str) -> None:
    dist.init_distributed()
    r, w = dist.rank(), dist.world_size()
    torch.manual_seed(0)
    big_n, v, din, dout = 8, 3, 6, 4
    x = torch.randn(big_n, v, din, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 1, 2, 0])
    proj = torch.nn.Linear(din, dout).double()  # identical on every rank (same seed)
    n = big_n // w
    mine = slice(r * n, (r + 1) * n)

    def ntx(xb, lb, gather):
        z = proj(xb)
        return NTXentLoss(0.1, gather_distributed=gather)(z[:, 0], z[:, 1])

    def sup(xb, lb, gather):
        return SupConLoss(0.1, gather_distributed=gather)(proj(xb), lb)

    def simclr_v(xb, lb, gather):
        return SupConLoss(0.2, contrast_mode="one", gather_distributed=gather)(proj(xb), None)

    def moco(xb, lb, gather):
        z = proj(xb)
        return MoCoV3Loss(0.2, gather_distributed=gather)(z[:, 0], z[:, 1].detach())

    seg_labels = torch.randint(0, dout, (big_n, v), generator=torch.Generator().manual_seed(1))

    def dice_ce(xb, lb, gather):  # logits (n, K=4, 3 "voxels"); the batch Dice summed over ranks
        from medcl.losses.segmentation import DiceCELoss

        return DiceCELoss(gather_distributed=gather)(proj(xb).transpose(1, 2), lb)

    report: dict[str, object] = {"world_size": w}
    cases = [("ntxent", ntx, labels), ("supcon", sup, labels), ("supcon_simclr_one", simclr_v, labels),
             ("moco_v3", moco, labels), ("dice_ce", dice_ce, seg_labels)]
    for name, fn, labels in cases:
        proj.zero_grad()
        full = fn(x, labels, False)
        full.backward()
        ref = [p.grad.clone() for p in proj.parameters()]
        proj.zero_grad()
        local = fn(x[mine], labels[mine], True)
        local.backward()
        grads = [dist.all_reduce_mean(p.grad) for p in proj.parameters()]  # what DDP does
        loss = dist.all_reduce_mean(local.detach())
        report[name] = {
            "loss_full": full.item(), "loss_dist": float(loss),
            "loss_diff": abs(full.item() - float(loss)),
            "grad_diff": max((g - q).abs().max().item() for g, q in zip(grads, ref)),
            "grad_scale": max(q.abs().max().item() for q in ref),
        }

    # gather_with_grad directly, with different row counts per rank (r + 2 rows).
    sizes = [s + 2 for s in range(w)]
    xl = torch.full((sizes[r], 3), float(r), dtype=torch.float64, requires_grad=True)
    y = dist.gather_with_grad(xl)
    coef = torch.arange(y.numel(), dtype=torch.float64).reshape(y.shape) * (r + 1)
    (y * coef).sum().backward()
    start = sum(sizes[:r])
    base = torch.arange(y.numel(), dtype=torch.float64).reshape(y.shape)[start:start + sizes[r]]
    expected = base * sum(s + 1 for s in range(w))  # sum over ranks of each rank's coefficient
    rows_ok = y.shape[0] == sum(sizes) and all(
        bool((y[sum(sizes[:s]):sum(sizes[:s + 1])] == s).all()) for s in range(w))
    gather_err = torch.tensor([(xl.grad - expected).abs().max().item(), 0.0 if rows_ok else 1.0])
    gather_err = dist.all_reduce_sum(gather_err)
    report["gather_with_grad"] = {"grad_err": gather_err[0].item(), "rows_wrong": gather_err[1].item()}
    report["broadcast"] = dist.broadcast_object({"from": r} if r == 0 else None)
    if r == 0:
        with open(out_path, "w") as fh:
            json.dump(report, fh)
    dist.barrier()
    dist.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
