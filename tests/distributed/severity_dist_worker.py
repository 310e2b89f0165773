"""Worker of test_severity_distributed.py under ``torchrun --nproc_per_node=2`` (gloo, CPU).

Each rank holds a *different* training loader (rank 1's images are shifted), as would happen if ranks scored their
own shards; oct-severity's setup must still give every rank rank 0's anomaly model, bin edges and pseudo-labels —
the same as a single process computes from rank 0's data. Rank 0 writes what every rank holds as JSON.
"""

from __future__ import annotations

import json
import sys

import torch

from medcl import distributed as dist
from medcl.methods import build_method
from medcl.networks import build_encoder


def _loader(shift: float) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(24, 1, 16, 16, generator=g)
    images[12:, :, 4:10, 4:10] += 2.0  # abnormal: a bright lesion
    labels = torch.tensor([0] * 12 + [1] * 12)
    images = images + shift
    return [{"image": images[i:i + 8], "label": labels[i:i + 8], "index": torch.arange(i, i + 8) + 100}
            for i in range(0, 24, 8)]


def _method():
    enc = build_encoder("tiny_cnn", in_channels=1, spatial_dims=2)
    return build_method("oct-severity", enc, num_bins=3, ae_epochs=3, ae_widths=(4, 8), hidden_dim=16, out_dim=8)


def main(out_path: str) -> None:
    dist.init_distributed()
    r = dist.rank()
    m = _method()
    m.setup(_loader(0.0 if r == 0 else 0.5))
    mine = {"labels": m.pseudo_labels.tolist(), "edges": m.bin_edges.tolist(),
            "ae": [p.detach().double().sum().item() for p in m.severity_model.parameters()]}
    every = dist.gather_objects(mine)
    if r == 0:
        ref = _method()
        state = ref._fit_and_score(_loader(0.0))  # one process, rank 0's data, no collective
        ref.severity_model.load_state_dict(state["model"])
        ref.set_pseudo_labels(state["scores"], state["rows"])
        single = {"labels": ref.pseudo_labels.tolist(), "edges": ref.bin_edges.tolist(),
                  "ae": [p.detach().double().sum().item() for p in ref.severity_model.parameters()]}
        with open(out_path, "w") as fh:
            json.dump({"ranks": every, "single": single}, fh)
    dist.barrier()
    dist.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
