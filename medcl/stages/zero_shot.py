"""Zero-shot classification from class prompts and image↔report retrieval, for an encoder pretrained with ``clip``.

The ``clip`` pretraining writes ``pretrain/text_model.pt``: its last image encoder, the text encoder (the project
tokenizer and transformer, or the local Hugging Face folder with its fine-tuned weights) and both projections. The
classify stage then adds, on the test patients (:func:`run`):

* **Zero-shot**: each class is described by prompts (``classify.prompts``: class → texts; without them
  ``"<class>."`` and ``"findings of <class>."``); a class embedding is the mean of its prompts' normalised
  embeddings, renormalised (CLIP's prompt ensembling). Probabilities are the softmax over classes of the cosine
  similarities times the learnt logit scale (multi-label: each class's sigmoid of its scaled similarity, centred
  on the mean over classes). Metrics with patient-bootstrap CIs, as the probes; no label is used.
* **Retrieval**: image→text and text→image recall@1/5/10 among the test samples with a report. A hit is a
  retrieved report with the same de-identified text as the sample's own (templated reports repeat word for word).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medcl.checkpoint_file import load_checkpoint, save_checkpoint
from medcl.engine.inference import extract_features
from medcl.errors import ConfigError
from medcl.metrics.bootstrap import metrics_with_ci
from medcl.stages.common import make_encoder, make_loader, make_transforms
from medcl.text.encoders import HFTextEncoder, ProjectTextEncoder

if TYPE_CHECKING:
    from medcl.stages.context import RunContext
    from medcl.tracking.protocol import Tracker

log = logging.getLogger(__name__)
KS = (1, 5, 10)


def save_text_model(path: Path, method: Any, encoder_name: str) -> Path:
    """Write what zero-shot needs from a trained ``clip`` method (its last state)."""
    text = method.text
    state = text.state() if hasattr(text, "state") else {"kind": "hf", "path": str(text.path),
                                                           "max_len": text.max_len,
                                                           "weights": text.model.state_dict()}
    save_checkpoint(path, {"kind": "clip", "encoder": method.encoder.state_dict(), "encoder_name": encoder_name,
                           "image_proj": method.image_proj.state_dict(), "text_proj": method.text_proj.state_dict(),
                           "text": state, "logit_scale": float(method.criterion.scale())})
    return path


def load_text_model(ctx: RunContext, path: str) -> dict[str, Any]:
    """``{"encoder", "image_proj", "text", "text_proj", "scale"}`` rebuilt from :func:`save_text_model`'s file."""
    ck = load_checkpoint(path)
    cfg = ctx.cfg
    base = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained_path": None})})
    encoder = make_encoder(base)
    encoder.load_state_dict(ck["encoder"])
    t = ck["text"]
    if t["kind"] == "project":
        text = ProjectTextEncoder.from_state(t)
    else:
        text = HFTextEncoder(t["path"], max_len=t["max_len"])
        text.model.load_state_dict(t["weights"])
    image_proj = torch.nn.Linear(*reversed(ck["image_proj"]["weight"].shape), bias=False)
    image_proj.load_state_dict(ck["image_proj"])
    text_proj = torch.nn.Linear(*reversed(ck["text_proj"]["weight"].shape), bias=False)
    text_proj.load_state_dict(ck["text_proj"])
    return {"encoder": encoder.eval(), "image_proj": image_proj.eval(), "text": text.eval(),
            "text_proj": text_proj.eval(), "scale": float(ck["logit_scale"])}


def prompts_for(classes: list[str], configured: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each class's prompts: the configured ones, else ``"<class>."`` and ``"findings of <class>."``.

    Raises:
        ConfigError: a prompt names a class the data do not have, or a class's list is empty.
    """
    unknown = [k for k in configured if k not in classes]
    if unknown:
        raise ConfigError(f"classify.prompts names {unknown}, not classes of the data ({classes})",
                          where="classify.prompts", fix="one entry per class of data.classes")
    out = {}
    for c in classes:
        texts = [str(t) for t in configured.get(c, [])]
        if c in configured and not texts:
            raise ConfigError(f"classify.prompts[{c!r}] is empty", where="classify.prompts",
                              fix="give at least one prompt per class, or leave the class out for the default")
        name = str(c).replace("_", " ")
        out[c] = texts or [f"{name}.", f"findings of {name}."]
    return out


def zero_shot_probs(images: np.ndarray, classes: np.ndarray, scale: float, task: str) -> np.ndarray:
    """Probabilities from normalised image ``(N, D)`` and class ``(K, D)`` embeddings and the logit scale."""
    s = scale * images @ classes.T
    if task == "multilabel":
        return 1.0 / (1.0 + np.exp(-(s - s.mean(1, keepdims=True))))
    e = np.exp(s - s.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def recall_at_k(sim: np.ndarray, same: np.ndarray, ks: tuple[int, ...] = KS) -> dict[int, float]:
    """Recall@K of queries (rows of ``sim`` ``(N, M)``): whether a hit (``same`` ``(N, M)`` bool) is in the top K."""
    order = np.argsort(-sim, axis=1, kind="stable")
    hit = np.take_along_axis(same, order, axis=1)
    return {k: float(hit[:, :k].any(1).mean()) for k in ks}


def _normalise(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).numpy()


def run(ctx: RunContext, tracker: Tracker, path: str, test_idx: np.ndarray, test_items: list[dict], y: np.ndarray,
        patients: np.ndarray) -> dict[str, Any]:
    """Zero-shot metrics and retrieval recall on the test samples; logged, returned with summary rows."""
    cfg, data = ctx.cfg, ctx.data
    m = load_text_model(ctx, path)
    loader = make_loader(ctx, test_items, make_transforms(cfg, train=False), batch_size=cfg.data.batch_size,
                         shuffle=False, train=False, distributed=False)
    feats, _, _, idx = extract_features(m["encoder"].to(ctx.device), loader, device=ctx.device)
    pos = {int(i): k for k, i in enumerate(idx)}
    feats = feats[[pos[int(i)] for i in test_idx]]
    with torch.no_grad():
        img = _normalise(m["image_proj"](torch.as_tensor(feats)))
        prompts = prompts_for(list(data.classes), dict(cfg.classify.prompts))
        cls = []
        for c in data.classes:
            e = _normalise(m["text_proj"](m["text"](prompts[c])))
            cls.append(e.mean(0) / max(np.linalg.norm(e.mean(0)), 1e-12))
    probs = zero_shot_probs(img, np.stack(cls), m["scale"], data.task)
    y_metric = y.astype(np.int64) if y.ndim == 1 else y
    res = metrics_with_ci(y_metric, probs, data.task, patients, class_names=list(data.classes),
                          n_boot=cfg.classify.n_boot, seed=cfg.seed)
    auc = next((k for k in ("auroc", "macro_auroc") if k in res), None)
    logged = {f"test/zero_shot/{k}": v["value"] for k, v in res.items() if not k.startswith("_")}
    logged.update({f"test/zero_shot/{k}_ci_low": v["ci_low"] for k, v in res.items() if not k.startswith("_")})
    logged.update({f"test/zero_shot/{k}_ci_high": v["ci_high"] for k, v in res.items() if not k.startswith("_")})
    out: dict[str, Any] = {"metrics": {k: v for k, v in res.items() if not k.startswith("_")},
                           "prompts_per_class": {c: len(p) for c, p in prompts.items()}}
    summary = []
    if auc:
        summary.append({"model": "clip zero-shot", "metric": f"test {auc.replace('_', ' ')} (no labels)",
                        "value": f"{res[auc]['value']:.3f} [{res[auc]['ci_low']:.3f}, {res[auc]['ci_high']:.3f}]"})
    reports = data.reports(test_idx)
    have = [i for i, t in enumerate(reports) if t.strip()]
    if len(have) >= 2:
        with torch.no_grad():
            txt = _normalise(m["text_proj"](m["text"]([reports[i] for i in have])))
        sim = img[have] @ txt.T
        texts = np.asarray([reports[i] for i in have], dtype=object)
        same = texts[:, None] == texts[None, :]
        i2t, t2i = recall_at_k(sim, same), recall_at_k(sim.T, same.T)
        out["retrieval"] = {"n": len(have), "image_to_text": i2t, "text_to_image": t2i}
        logged.update({f"test/retrieval/image_to_text_recall_at_{k}": v for k, v in i2t.items()})
        logged.update({f"test/retrieval/text_to_image_recall_at_{k}": v for k, v in t2i.items()})
        summary.append({"model": "clip retrieval", "metric": "test image→text recall@1/5/10",
                        "value": " / ".join(f"{i2t[k]:.2f}" for k in KS)})
    tracker.log_metrics({k: float(v) for k, v in logged.items() if v is not None and np.isfinite(v)})
    log.info("classify: zero-shot %s", "; ".join(f"{r['metric']} {r['value']}" for r in summary))
    out["summary"] = summary
    return out
