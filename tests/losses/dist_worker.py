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
from medcl.losses import (
    LOSSES,
    BalancedSupConLoss,
    CLIPLoss,
    CLOCSLoss,
    DenseContrastLoss,
    GraphSupConLoss,
    HardNegativeSupConLoss,
    MoCoV3Loss,
    NTXentLoss,
    PatientContrastLoss,
    PrototypeLoss,
    SupConLoss,
)


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

    # patients / records shared across the two ranks' halves; unlabelled rows (-1) unevenly spread, so that a
    # per-rank mean over a different number of valid anchors would differ from the global one
    patients = torch.tensor([0, 1, 2, 0, 3, 1, 2, 3])
    sparse = torch.tensor([0, -1, 2, -1, 1, 1, 2, 0]) if w == 2 else labels  # 2 labelled rows on rank 0, 4 on rank 1
    multi = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 1], [0, 1, 0], [0, 0, 1], [1, 0, 0]],
                         dtype=torch.float64)
    multi[5] = float("nan")  # one unlabelled row

    def patient(xb, lb, gather):
        return PatientContrastLoss(0.1, gather_distributed=gather)(proj(xb), lb)

    def clocs(xb, lb, gather):
        return CLOCSLoss(0.1, positives="patient", gather_distributed=gather)(proj(xb), lb)

    def clocs_record(xb, lb, gather):
        return CLOCSLoss(0.1, positives="record", gather_distributed=gather)(proj(xb), None, lb)

    def hardneg(xb, lb, gather):
        return HardNegativeSupConLoss(0.1, hard_pairs=[(0, 1)], hard_weight=3.0, classes=["a", "b", "c"],
                                      gather_distributed=gather)(proj(xb), lb)

    def graph(xb, lb, gather):
        sim = [[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.0]]
        return GraphSupConLoss(0.1, similarity=sim, gather_distributed=gather)(proj(xb), lb)

    def balanced(xb, lb, gather):  # class weights make the anchor mean a weighted one
        return BalancedSupConLoss(0.1, mode="class_balanced", num_classes=3, class_counts=[50, 5, 20],
                                  gather_distributed=gather)(proj(xb), lb)

    torch.manual_seed(3)
    bcl = BalancedSupConLoss(0.1, mode="both", num_classes=3, dim=dout, class_counts=[50, 5, 20]).double()

    def balanced_both(xb, lb, gather):  # + learnable prototypes as keys (BCL)
        bcl.gather_distributed = gather
        return bcl(proj(xb), lb)

    def prototype(xb, lb, gather):
        return PrototypeLoss(num_classes=3, dim=dout, gather_distributed=gather)(proj(xb), lb)

    xd = torch.randn(big_n, 2, din, 3, 3, dtype=torch.float64)

    def dense(xb, lb, gather):  # dense maps (n, D, 3, 3) of two aligned views; same sampled locations on every rank
        f = proj(xb.movedim(2, -1)).movedim(-1, 2)
        g = torch.Generator().manual_seed(7)
        return DenseContrastLoss(0.1, num_samples=4, local_negatives=lb, gather_distributed=gather)(
            f[:, 0], f[:, 1], generator=g)

    torch.manual_seed(4)
    clip_hard = CLIPLoss(0.1).double()
    clip_soft = CLIPLoss(0.1, similarity=[[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.0]]).double()

    def clip(xb, lb, gather):  # image = view 0, text = view 1 (the logit scale learns too)
        loss = clip_soft if isinstance(lb, torch.Tensor) else clip_hard
        loss.gather_distributed = gather
        z = proj(xb)
        return loss(z[:, 0], z[:, 1], lb if isinstance(lb, torch.Tensor) else None)

    report: dict[str, object] = {"world_size": w, "losses": sorted(LOSSES)}
    cases = [("ntxent", ntx, labels, x), ("supcon", sup, labels, x), ("supcon_simclr_one", simclr_v, labels, x),
             ("moco_v3", moco, labels, x), ("dice_ce", dice_ce, seg_labels, x),
             ("patient", patient, patients, x), ("clocs", clocs, patients, x),
             ("clocs_record", clocs_record, patients, x), ("hard_negative_supcon", hardneg, sparse, x),
             ("graph_supcon", graph, multi, x), ("balanced_supcon", balanced, sparse, x),
             ("balanced_supcon_both", balanced_both, sparse, x), ("prototype", prototype, sparse, x),
             ("dense", dense, "image", xd), ("dense_batch", dense, "batch", xd),
             ("clip", clip, "hard", x), ("clip_soft", clip, sparse, x)]
    for name, fn, labels, inputs in cases:
        params = (list(proj.parameters()) + list(bcl.parameters()) + list(clip_hard.parameters())
                  + list(clip_soft.parameters()))
        for prm in params:
            prm.grad = None
        lab = labels  # a tensor per sample, or dense's local_negatives mode (a str)
        full = fn(inputs, lab, False)
        full.backward()
        ref = [prm.grad.clone() if prm.grad is not None else torch.zeros_like(prm) for prm in params]
        for prm in params:
            prm.grad = None
        local = fn(inputs[mine], lab if isinstance(lab, str) else lab[mine], True)
        local.backward()
        grads = [dist.all_reduce_mean(prm.grad if prm.grad is not None else torch.zeros_like(prm))
                 for prm in params]  # what DDP does
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
