"""Loading encoder weights from a local file — never from the network.

Accepted files:

* a plain state dict saved with ``torch.save`` (``.pth``/``.pt``/``.bin``) or
  ``safetensors`` (``.safetensors``), as timm, torchvision and MONAI (Med3D) publish them;
* a medcl checkpoint (a dict holding the method's or encoder's state dict under a key such
  as ``"model"``, ``"method"``, ``"encoder"`` or ``"state_dict"``).

Key prefixes (``module.`` from DDP, ``_orig_mod.`` from ``torch.compile``, ``encoder.`` of a
medcl method, ``model.`` of a medcl encoder wrapper, ...) are stripped by picking the variant
that matches the encoder's own keys best. The stem convolution is adapted to the encoder's
input channels the way timm does it (sum for 1 channel, repeat-and-rescale otherwise).
Anything that still does not fit raises a :class:`~medcl.errors.CheckpointError` listing the
missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from medcl.checkpoint_file import load_checkpoint
from medcl.errors import CheckpointError

log = logging.getLogger(__name__)

#: Keys under which checkpoints commonly nest the weights, most specific first.
_NESTED_KEYS = ("encoder", "state_dict", "model", "method", "module", "net", "network", "weights")
#: Prefixes preferred when two key variants match equally well.
_PREFERRED_PREFIXES = ("module.", "_orig_mod.", "encoder.", "model.", "backbone.", "net.")
_SHOW = 8


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a stem convolution weight to a different number of input channels.

    Same rule as timm's ``adapt_input_conv`` (for any number of spatial axes): one target
    channel gets the sum over the source channels; otherwise the source channels are repeated
    cyclically and rescaled by ``C_src / C_new`` so that activations keep their magnitude.

    Args:
        weight: ``(O, C_src, *k)`` convolution weight.
        in_channels: wanted ``C_new``.

    Returns:
        ``(O, C_new, *k)`` weight of the input's dtype.
    """
    c_src = weight.shape[1]
    if in_channels == c_src:
        return weight
    w = weight.float()
    if in_channels == 1:
        out = w.sum(dim=1, keepdim=True)
    else:
        reps = math.ceil(in_channels / c_src)
        out = w.repeat(1, reps, *([1] * (w.ndim - 2)))[:, :in_channels] * (c_src / in_channels)
    return out.to(weight.dtype)


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a local ``.pth``/``.pt``/``.bin``/``.safetensors`` file.

    Args:
        path: local file.

    Returns:
        Flat ``{key: tensor}`` (for a nested checkpoint, the first nested state dict found
        under ``encoder``/``state_dict``/``model``/``method``/... ).

    Raises:
        CheckpointError: missing, unreadable or holding no tensors.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(
            "weights file not found",
            where=str(p),
            fix="point model.pretrained_path at an existing local .pth/.safetensors file, or at the runs:/ or "
            "models:/ URI of a model medcl logged (medcl never downloads weights from a hub)",
        )
    with p.open("rb") as fh:
        head = fh.read(8)
    if head == b"MEDCLCKP":  # medcl's own checksummed format (medcl.engine.checkpoint)
        obj = load_checkpoint(p)
        sd = _find_state_dict(obj)
        if sd is None:
            raise CheckpointError("the medcl checkpoint holds no state dict", where=str(p),
                                  fix="point model.pretrained_path at a pretrain stage's encoder.pt")
        return sd
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p), device="cpu")
        else:
            try:
                obj = torch.load(p, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                # A medcl/other checkpoint holding non-tensor Python objects (e.g. RNG state).
                # The user pointed us at this local file, so we trust it, but say so.
                log.warning("%s: holds Python objects beyond tensors; loading it with full unpickling", p)
                obj = torch.load(p, map_location="cpu", weights_only=False)
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt/truncated file: any library error becomes ours
        raise CheckpointError(
            f"cannot read weights file ({type(exc).__name__}: {exc})",
            where=str(p),
            fix="check the file is a complete torch.save or safetensors file",
        ) from exc
    sd = _find_state_dict(obj)
    if sd is None:
        raise CheckpointError(
            "file holds no state dict (no mapping of parameter names to tensors)",
            where=str(p),
            fix="save weights with torch.save(model.state_dict(), path) or safetensors",
        )
    return sd


def _find_state_dict(obj: object, depth: int = 0) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping) or depth > 3:
        return None
    if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return dict(obj)
    for key in _NESTED_KEYS:
        if key in obj:
            found = _find_state_dict(obj[key], depth + 1)
            if found:
                return found
    for value in obj.values():
        found = _find_state_dict(value, depth + 1)
        if found:
            return found
    return None


def _key_variants(sd: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The state dict itself and the sub-dicts with one to three leading prefixes stripped."""
    out = [sd]
    frontier = [sd]
    for _ in range(3):
        nxt = []
        for d in frontier:
            firsts = {k.split(".", 1)[0] + "." for k in d if "." in k}
            ordered = [p for p in _PREFERRED_PREFIXES if p in firsts] + sorted(firsts - set(_PREFERRED_PREFIXES))
            for prefix in ordered:
                sub = {k[len(prefix) :]: v for k, v in d.items() if k.startswith(prefix)}
                nxt.append(sub)
        out.extend(nxt)
        frontier = nxt
    return out


def _score(sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> int:
    return sum(1 for k, v in sd.items() if k in target and target[k].ndim == v.ndim)


def _fmt(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def load_pretrained(
    encoder: nn.Module, path: str | Path, *, strict: bool = True, name: str = ""
) -> dict[str, list[str]]:
    """Load local weights into ``encoder`` (in place).

    The file's keys are matched against both ``encoder.weights_module()`` (upstream library
    naming, e.g. timm's) and ``encoder`` itself (a medcl checkpoint). Classifier-head keys
    listed in ``encoder.ignored_weight_prefixes`` are dropped silently; the stem convolution
    is adapted to ``encoder.in_channels``; encoders may adapt further keys through
    ``encoder.adapt_weight(key, tensor, target_shape)`` (e.g. ViT position embeddings).

    Args:
        encoder: a medcl :class:`~medcl.networks.base.Encoder`.
        path: local weights file.
        strict: if True (default) any missing, unexpected or mis-shaped key is an error; if
            False they are logged and only the matching part is loaded (still an error when
            nothing matches).
        name: encoder name for messages.

    Returns:
        ``{"missing": [...], "unexpected": [...], "adapted": [...]}`` key lists.

    Raises:
        CheckpointError: unreadable file or weights that do not fit the encoder.
    """
    where = str(path)
    label = name or getattr(encoder, "name", "") or type(encoder).__name__
    raw = read_weights_file(path)
    module, sd = _best_match(encoder, raw, label, where)
    target = module.state_dict()
    to_load, adapted, mismatched, mismatched_keys, unexpected = _fit_tensors(encoder, sd, target)
    missing = [
        k
        for k in target
        if k not in to_load and k not in mismatched_keys and not k.endswith("num_batches_tracked")
    ]
    if (missing or unexpected or mismatched) and strict:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_fmt(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_fmt(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {_fmt(mismatched)}")
        raise CheckpointError(
            f"weights do not fit encoder '{label}': " + "; ".join(parts),
            where=where,
            fix=(None if mismatched else _norm_hint(module, missing, unexpected))
            or "use weights of the same architecture and size as model.encoder (same depth/width), "
            "or set model.options.pretrained_strict=false to load only the matching tensors",
        )
    if missing or unexpected or mismatched:
        log.warning(
            "%s: loaded %d tensors into %s; skipped %d missing, %d unexpected, %d mis-shaped",
            where, len(to_load), label, len(missing), len(unexpected), len(mismatched),
        )
    module.load_state_dict(to_load, strict=False)
    if adapted:
        log.info("%s: adapted %s to the encoder", where, ", ".join(adapted))
    return {"missing": missing, "unexpected": unexpected, "adapted": adapted}


def _norm_hint(module: nn.Module, missing: list[str], unexpected: list[str]) -> str | None:
    """The fix when the only difference is the normalisation layers (same network, another ``norm``), else None.

    Missing keys that all belong to the model's batch/group/layer-norm modules mean the file was trained with a
    normalisation that keeps no parameters (instance norm without affine, as MONAI's ``BasicUNet`` default and
    medcl's ``unet_encoder3d`` before batch norm became its default); unexpected keys that are all running
    statistics mean the reverse (a batch-norm file for an instance-norm model).
    """
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    norms = {name for name, m in module.named_modules() if isinstance(m, norm_types)}
    if missing and not unexpected and all(k.rsplit(".", 1)[0] in norms for k in missing):
        return ("the weights were trained with a normalisation that keeps no parameters or running statistics "
                "(instance norm; medcl's unet_encoder3d used it before batch norm became its default): set "
                "model.options.norm=instance (medcl run PIPELINE --set model.options.norm=instance)")
    # every unexpected key belongs to a layer whose running statistics are unexpected too: batch-norm layers
    if unexpected and not missing and all(f"{k.rsplit('.', 1)[0]}.running_mean" in unexpected for k in unexpected):
        return ("the weights were trained with batch norm (running statistics) and model.options.norm asks for "
                "another normalisation: set model.options.norm=batch")
    return None


def _best_match(
    encoder: nn.Module, raw: dict[str, torch.Tensor], label: str, where: str
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The module (upstream naming or the encoder itself) and key variant of ``raw`` that match best.

    Raises:
        CheckpointError: no key of any variant matches either module.
    """
    weights_module = encoder.weights_module() if hasattr(encoder, "weights_module") else encoder
    candidates = [weights_module] if weights_module is encoder else [weights_module, encoder]
    best: tuple[int, nn.Module, dict[str, torch.Tensor]] = (-1, weights_module, raw)
    for module in candidates:
        target = module.state_dict()
        for variant in _key_variants(raw):
            s = _score(variant, target)
            if s > best[0]:
                best = (s, module, variant)
    score, module, sd = best
    if score == 0:
        raise CheckpointError(
            f"no key of the weights file matches encoder '{label}' "
            f"(file keys: {_fmt(sorted(raw))}; encoder keys: {_fmt(list(encoder.state_dict()))})",
            where=where,
            fix="use weights saved from the same architecture as model.encoder, or change model.encoder",
        )
    return module, sd


def _fit_tensors(
    encoder: nn.Module, sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str], list[str], set[str], list[str]]:
    """Match the file's tensors ``sd`` to the ``target`` state dict, adapting shapes where the encoder can.

    The stem convolution is adapted to ``encoder.in_channels``; other mis-shaped tensors go through
    ``encoder.adapt_weight`` when it exists. Keys under ``encoder.ignored_weight_prefixes`` are dropped.

    Returns:
        ``(to_load, adapted, mismatched, mismatched_keys, unexpected)``: the tensors to load (in the
        target's dtypes), the adapted keys, the mis-shaped keys with both shapes (for messages) and as a
        set, and the file keys the target does not have.
    """
    ignored = tuple(getattr(encoder, "ignored_weight_prefixes", ()))
    in_channels = getattr(encoder, "in_channels", None)
    spatial_dims = getattr(encoder, "spatial_dims", None)
    stem_key = next(
        (
            k
            for k, v in target.items()
            if k.endswith("weight") and spatial_dims is not None and v.ndim == spatial_dims + 2
        ),
        None,
    )
    adapted: list[str] = []
    mismatched: list[str] = []
    mismatched_keys: set[str] = set()
    unexpected: list[str] = []
    to_load: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k not in target:
            if not (ignored and k.startswith(ignored)):
                unexpected.append(k)
            continue
        want = target[k].shape
        if v.shape != want:
            new = None
            if (
                k == stem_key
                and in_channels is not None
                and v.ndim == len(want)
                and v.shape[0] == want[0]
                and v.shape[2:] == want[2:]
            ):
                new = adapt_input_channels(v, in_channels)
            elif hasattr(encoder, "adapt_weight"):
                new = encoder.adapt_weight(k, v, want)
            if new is None or new.shape != want:
                mismatched.append(f"{k} (file {tuple(v.shape)} vs model {tuple(want)})")
                mismatched_keys.add(k)
                continue
            adapted.append(k)
            v = new
        to_load[k] = v.to(target[k].dtype)
    return to_load, adapted, mismatched, mismatched_keys, unexpected
