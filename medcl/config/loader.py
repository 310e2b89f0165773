"""Load a pipeline YAML: ``include:`` presets, ``--set`` overrides, typed validation.

Merge order (later wins): included files in the order listed (each may include others),
then the file's own keys, then ``--set key.path=value`` overrides. Dicts merge key by key;
lists and scalars are replaced.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from medcl import phi
from medcl.config.schema import PipelineConfig
from medcl.errors import ConfigError
from medcl.lookup import nearest

MAX_INCLUDE_DEPTH = 10
#: keys that never change what is computed; left out of the pipeline key used to find earlier runs
NON_SEMANTIC_KEYS = (("runtime", "progress"), ("tracking",), ("report",), ("description",))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist", where=str(path),
                          fix="check the path (includes are relative to the file that includes them)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", where=str(path), fix="save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"invalid YAML: {getattr(exc, 'problem', exc)}", where=loc,
                          fix="fix the YAML syntax (indentation, colons, quotes)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"top level is a {type(data).__name__}, not a mapping", where=str(path),
                          fix="a pipeline file is a YAML mapping of sections (data:, model:, ...)")
    return data


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Merge ``top`` into a copy of ``base``: dicts recursively, anything else replaced.

    An explicitly empty mapping in ``top`` clears the included one (``options: {}`` after switching
    ``model.encoder`` drops the included encoder's options instead of keeping them all).
    """
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_raw(path: str | Path, _depth: int = 0, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML file and resolve its ``include:`` list recursively (no validation)."""
    path = Path(path).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"include cycle: {cycle}", where=str(path), fix="remove one of the includes")
    if _depth > MAX_INCLUDE_DEPTH:
        raise ConfigError("includes nested too deeply", where=str(path), fix="flatten the includes")
    data = _read_yaml(path)
    includes = data.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list):
        raise ConfigError(f"include must be a list of paths, got {includes!r}", where=f"{path}: include",
                          fix="write include: [../configs/modality/oct.yaml, ...]")
    merged: dict[str, Any] = {}
    for inc in includes:
        inc_path = (path.parent / str(inc)).resolve()
        merged = deep_merge(merged, load_raw(inc_path, _depth + 1, (*_chain, path)))
    return deep_merge(merged, data)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=1e-3"`` → (["a", "b"], 0.001); the value is parsed as YAML (numbers, lists, bools)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} has no '='", where="--set",
                          fix="write --set section.key=value, e.g. --set pretrain.epochs=5")
    key, _, text = item.partition("=")
    keys = [k.strip() for k in key.strip().split(".")]
    if not all(keys):
        raise ConfigError(f"override key {key!r} is empty or has an empty part", where="--set",
                          fix="write --set section.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return keys, value


def _known_keys(model: type[BaseModel] | None) -> list[str]:
    return list(model.model_fields) if model is not None else []


def _submodel(model: type[BaseModel] | None, key: str) -> type[BaseModel] | None:
    if model is None or key not in model.model_fields:
        return None
    ann = model.model_fields[key].annotation
    for cand in (ann, *get_args(ann)):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


#: sections whose budget can be given in epochs or in optimiser steps (``steps``, when set, is the budget)
BUDGET_SECTIONS = (("pretrain",), ("classify", "finetune"), ("segment",))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides; unknown keys are rejected here with a did-you-mean.

    The last word on a budget wins: ``--set pretrain.epochs=50`` on a pipeline whose YAML gives
    ``pretrain.steps`` trains 50 epochs (the override clears ``steps``, unless ``steps`` is set too).
    """
    out = copy.deepcopy(raw)
    set_paths = {tuple(parse_override(item)[0]) for item in overrides}
    for section in BUDGET_SECTIONS:
        if (*section, "epochs") in set_paths and (*section, "steps") not in set_paths:
            node = out
            for k in section:
                node = node.get(k) if isinstance(node, dict) else None
            if isinstance(node, dict) and node.get("steps") is not None:
                node["steps"] = None
    for item in overrides:
        keys, value = parse_override(item)
        node, model = out, PipelineConfig
        for i, k in enumerate(keys):
            last = i == len(keys) - 1
            open_section = model is not None and model.model_config.get("extra") == "allow"
            if model is not None and k not in model.model_fields and not open_section:
                path = ".".join(keys[: i + 1])
                near = nearest(k, _known_keys(model))
                hint = f"did you mean {'.'.join([*keys[:i], near[0]])!r}?" if near else (
                    f"known keys here: {', '.join(_known_keys(model))}")
                raise ConfigError(f"unknown key {path!r}", where=f"--set {item}", fix=hint)
            if last:
                node[k] = value
            else:
                if not isinstance(node.get(k), dict):
                    node[k] = {}
                node = node[k]
                model = _submodel(model, k)
    return out


def _loc_value(raw: dict[str, Any], loc: tuple[Any, ...]) -> Any:
    node: Any = raw
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _format_error(err: dict[str, Any], raw: dict[str, Any], source: str) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
    path = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    value = _loc_value(raw, loc)
    if kind == "extra_forbidden":
        parent = _parent_model(loc[:-1])
        near = nearest(loc[-1], _known_keys(parent))
        fix = f"did you mean {'.'.join([*map(str, loc[:-1]), near[0]])!r}?" if near else (
            f"known keys: {', '.join(_known_keys(parent))}" if parent else "remove it")
        return f"{source}: unknown key {path!r} — {fix}"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",") if c.strip()]
        near = nearest(value, choices)
        fix = f"did you mean {near[0]!r}?" if near else f"choose one of: {expected}"
        return f"{source}: {path} = {value!r} is not a valid choice — {fix} (choices: {expected})"
    if kind == "missing":
        return f"{source}: {path} is required — add it to the YAML or pass --set {path}=..."
    expected = err.get("msg", "")
    return f"{source}: {path} = {value!r} is invalid ({expected}) — give a value of the expected type"


def _parent_model(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = PipelineConfig
    for part in loc:
        model = _submodel(model, str(part))
    return model


def validate(raw: dict[str, Any], source: str = "config") -> PipelineConfig:
    """Validate a merged raw dict into a :class:`PipelineConfig` or raise one :class:`ConfigError`."""
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_format_error(e, raw, source) for e in exc.errors()]
        first = lines[0]
        more = f" (+{len(lines) - 1} more: " + "; ".join(lines[1:]) + ")" if len(lines) > 1 else ""
        raise ConfigError(first + more) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Load, include, override and validate a pipeline YAML."""
    raw = load_raw(path)
    raw = apply_overrides(raw, list(overrides or []))
    if "name" not in raw:
        raw["name"] = Path(path).stem
    cfg = validate(raw, source=str(path))
    # Paths in the YAML are relative to the pipeline file; --set paths relative to the cwd.
    base = Path(path).resolve().parent
    set_keys = {parse_override(o)[0][-1] for o in overrides or []} if overrides else set()
    for section, key in (("data", "manifest"), ("data", "root"), ("data", "cache_dir"), ("model", "pretrained_path")):
        val = getattr(getattr(cfg, section), key)
        if val and not Path(val).is_absolute() and not str(val).startswith(("runs:/", "models:/")):
            anchor = Path.cwd() if key in set_keys else base
            setattr(getattr(cfg, section), key, str((anchor / val).resolve()))
    return cfg


def resolved_dict(cfg: PipelineConfig) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (what is saved with every run).

    Secrets never reach it: a password inside a URI (``tracking.uri: http://user:pw@host``) and the
    value of any secret environment variable (:data:`medcl.phi.SECRET_ENV_VARS`) become ``***``.
    """
    return phi.scrub_secrets(cfg.model_dump(mode="json"))


def dump_yaml(cfg: PipelineConfig) -> str:
    """The resolved config (:func:`resolved_dict`, secrets masked) as YAML text, in schema order."""
    return yaml.safe_dump(resolved_dict(cfg), sort_keys=False)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists kept as JSON text), for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, dict)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def pipeline_key(cfg: PipelineConfig) -> str:
    """Stable hash of what the pipeline computes (finds earlier runs for skip/resume)."""
    d = resolved_dict(cfg)
    for path in NON_SEMANTIC_KEYS:
        node = d
        for p in path[:-1]:
            node = node.get(p, {})
        node.pop(path[-1], None)
    text = json.dumps(d, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
