"""SimCLR ResNet-18 training throughput on CPU: medcl's NT-Xent vs lightly's in the same loop.

One SimCLR model (timm ResNet-18 with a 1-channel stem, 2-layer projector; Chen et al. 2020) is
trained by ``medcl.engine.loop.train_one_epoch`` on in-memory batches of two views (no data loading,
so only model + loss + optimiser are timed). The only difference between the two arms is the
criterion: ``medcl.losses.NTXentLoss`` or ``lightly.loss.NTXentLoss`` (same temperature). The arms are
interleaved (A, B, A, B, ...) from identical weights so that a change in machine load hits both
alike; the figure is the median over rounds of images/s (two views per sample count as two images).
Target (issue 3): medcl / lightly >= 1.0.

Usage::

    python benchmarks/bench_train_loss.py --out benchmarks/results/train_loss.json [--quick]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import _common  # noqa: F401  (puts the checkout on sys.path)
import torch
from _common import base_meta, write_results


class LightlyCriterion(torch.nn.Module):
    """lightly's NT-Xent behind medcl's ``criterion(z_a, z_b)`` call."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        from lightly.loss import NTXentLoss

        self.loss = NTXentLoss(temperature=temperature)

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return self.loss(z_a, z_b)


def make_batches(n_batches: int, batch: int, size: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"views": torch.rand(batch, 2, 1, size, size, generator=g),
             "index": torch.arange(batch)} for _ in range(n_batches)]


def run(batch: int, size: int, steps: int, rounds: int, temperature: float) -> tuple[list[dict], dict]:
    from medcl.distributed import LOCAL
    from medcl.engine.loop import LoopSettings, Optimisation, train_one_epoch
    from medcl.methods import build_method
    from medcl.networks import build_encoder

    torch.manual_seed(0)
    base = build_method("simclr", build_encoder("resnet18", in_channels=1, spatial_dims=2),
                        temperature=temperature, hidden_dim=512, out_dim=128)
    arms = {"medcl": base, "lightly": copy.deepcopy(base)}
    arms["lightly"].criterion = LightlyCriterion(temperature)
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in arms.items()}
    batches = make_batches(steps, batch, size)
    # the loss values of one identical first step must agree (same weights, same batch)
    first = {}
    for name, m in arms.items():
        m.train()
        with torch.no_grad():
            first[name] = float(m(batches[0])["loss"])
    per_round: dict[str, list[float]] = {k: [] for k in arms}
    warm = {k: False for k in arms}
    for r in range(rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in order:
            if not warm[name]:  # one untimed step: allocator and oneDNN warm-up
                train_one_epoch(arms[name], batches[:1], Optimisation(opts[name]), LoopSettings(progress=False), comm=LOCAL)
                warm[name] = True
            t0 = time.perf_counter()
            train_one_epoch(arms[name], batches, Optimisation(opts[name]), LoopSettings(progress=False), comm=LOCAL,
                            epoch=r)
            sec = time.perf_counter() - t0
            per_round[name].append(2 * batch * steps / sec)
            print(f"# round {r} {name}: {per_round[name][-1]:.1f} images/s", file=sys.stderr, flush=True)
    rows = []
    for name, vals in per_round.items():
        rows.append({"impl": name, "loss": "medcl.losses.NTXentLoss" if name == "medcl" else "lightly.loss.NTXentLoss",
                     "images_per_s_median": statistics.median(vals), "images_per_s_rounds": vals,
                     "first_step_loss": first[name]})
    ratio = rows[0]["images_per_s_median"] / rows[1]["images_per_s_median"]
    return rows, {"ratio_medcl_over_lightly": ratio, "target": ">= 1.0", "met": ratio >= 1.0,
                  "first_loss_abs_diff": abs(first["medcl"] - first["lightly"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny: 16 × 32² images, 2 steps, 2 rounds")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--temperature", type=float, default=0.1)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.size, args.steps, args.rounds = 16, 32, 2, 2
    t0 = time.time()
    meta = {**base_meta(args.quick), "batch": args.batch, "image_size": args.size, "views": 2,
            "steps_per_round": args.steps, "rounds": args.rounds, "encoder": "resnet18 (timm, 1 channel)",
            "projector": "2-layer MLP 512 -> 128", "optimizer": "AdamW", "device": "cpu"}
    rows, summary = run(args.batch, args.size, args.steps, args.rounds, args.temperature)
    write_results(args.out, meta, rows, t0, summary=summary)
    print(f"medcl / lightly throughput: {summary['ratio_medcl_over_lightly']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
