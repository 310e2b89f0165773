"""Concept graphs for ontology-weighted SupCon (``supcon-graph``): a shipped cardiac graph or the user's own file.

A concept graph is a YAML/JSON mapping::

    name: my-graph
    is_a_weight: 0.5             # similarity across one is-a edge, in (0, 1]
    concepts:
      - {code: BBB, is_a: CD, name: bundle branch block}
      - {code: RBBB, is_a: BBB, aliases: [CRBBB]}
      ...

``is_a`` names one parent (or a list). :func:`concept_similarity` gives the data's classes the similarity of
:func:`medcl.losses.graph.ontology_similarity` over the *whole* graph (so two leaves are related through their
common ancestors even when the ancestors are not classes of the data), restricted to those classes. The shipped
graph ``ecg_scp`` (``configs/ontology/ecg_scp.yaml``) covers the PTB-XL superclasses and the common rhythm,
conduction and form statements with SCP-ECG-style codes, and the medcl ECG demo's class names as aliases.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medcl.errors import ConfigError
from medcl.lookup import did_you_mean
from medcl.losses.graph import ontology_similarity
from medcl.shipped import shipped

WHERE = "pretrain.method_options.similarity"
_CONCEPT_KEYS = {"code", "is_a", "name", "aliases", "description"}


def shipped_graphs() -> list[str]:
    """Names of the concept graphs medcl ships (``configs/ontology/*.yaml``)."""
    try:
        folder = shipped("configs", must_have="ontology") / "ontology"
    except ConfigError:
        return []
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_concept_graph(name_or_path: str) -> dict[str, Any]:
    """A shipped graph by name (``"ecg_scp"``) or a ``.yaml`` / ``.json`` file, parsed and checked.

    Raises:
        ConfigError: no such graph or file, a file that does not parse, or a malformed graph (which key, which
            concept, how to fix it).
    """
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        if path.suffix or "/" in str(name_or_path):
            raise ConfigError(f"concept graph file {name_or_path!r} does not exist", where=WHERE,
                              fix=f"give a .yaml/.json file or a shipped graph ({', '.join(shipped_graphs())})")
        names = shipped_graphs()
        if name_or_path not in names:
            raise ConfigError(f"no shipped concept graph {name_or_path!r}", where=WHERE,
                              fix=f"{did_you_mean(name_or_path, names)}use one of {', '.join(names)} or a file path")
        path = shipped("configs", must_have="ontology") / "ontology" / f"{name_or_path}.yaml"
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            graph = json.loads(text)
        else:
            import yaml  # lazy: only when a graph file is read

            graph = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - yaml and json raise different errors
        raise ConfigError(f"concept graph {path} does not parse: {exc}", where=WHERE,
                          fix="write it as YAML or JSON (see configs/ontology/ecg_scp.yaml)") from None
    check_concept_graph(graph, str(path))
    return graph


def _parents(concept: Mapping[str, Any]) -> list[str]:
    p = concept.get("is_a")
    return [] if p in (None, "") else [str(x) for x in (p if isinstance(p, list) else [p])]


def check_concept_graph(graph: Any, where: str = WHERE) -> None:
    """Raise :class:`ConfigError` naming the concept and key when ``graph`` is not a valid concept graph."""
    if not isinstance(graph, Mapping) or not isinstance(graph.get("concepts"), list) or not graph["concepts"]:
        raise ConfigError("a concept graph needs a non-empty 'concepts' list", where=where,
                          fix="write concepts: [{code: A}, {code: B, is_a: A}, ...]")
    w = graph.get("is_a_weight", 0.5)
    if not isinstance(w, int | float) or not 0 < float(w) <= 1:
        raise ConfigError(f"is_a_weight {w!r} is outside (0, 1]", where=where, fix="use e.g. 0.5")
    codes: dict[str, int] = {}
    for i, c in enumerate(graph["concepts"]):
        if not isinstance(c, Mapping) or not str(c.get("code") or "").strip():
            raise ConfigError(f"concept {i + 1} has no code", where=f"{where}: concepts[{i}]",
                              fix="give every concept a code, e.g. {code: RBBB, is_a: BBB}")
        unknown = sorted(set(c) - _CONCEPT_KEYS)
        if unknown:
            raise ConfigError(f"concept {c['code']!r} has unknown key {unknown[0]!r}", where=f"{where}: {c['code']}",
                              fix=f"{did_you_mean(unknown[0], sorted(_CONCEPT_KEYS))}use {', '.join(sorted(_CONCEPT_KEYS))}")
        if str(c["code"]) in codes:
            raise ConfigError(f"concept code {c['code']!r} appears twice", where=f"{where}: concepts[{i}]",
                              fix="give each concept one entry (list several parents in is_a)")
        codes[str(c["code"])] = i
    for c in graph["concepts"]:
        for p in _parents(c):
            if p not in codes:
                raise ConfigError(f"concept {c['code']!r} is_a {p!r}, which is not a concept of the graph",
                                  where=f"{where}: {c['code']}", fix=f"{did_you_mean(p, list(codes))}add {p!r} "
                                  "as a concept or fix the parent")


def resolve_classes(graph: Mapping[str, Any], classes: Sequence[str]) -> list[str]:
    """The concept code of each class name (a code or an alias; case-insensitive when unambiguous).

    Raises:
        ConfigError: classes the graph does not know, named with the nearest codes.
    """
    names: dict[str, str] = {}
    for c in graph["concepts"]:
        for n in [c["code"], *(c.get("aliases") or [])]:
            names[str(n)] = str(c["code"])
    lower: dict[str, set[str]] = {}
    for n, code in names.items():
        lower.setdefault(n.lower(), set()).add(code)
    out, missing = [], []
    for cls in classes:
        code = names.get(str(cls))
        if code is None and len(lower.get(str(cls).lower(), ())) == 1:
            code = next(iter(lower[str(cls).lower()]))
        if code is None:
            missing.append(str(cls))
        out.append(code)
    if missing:
        hints = "; ".join(f"{m}: {did_you_mean(m, list(names)) or 'no close code'}".rstrip() for m in missing)
        raise ConfigError(f"the concept graph {graph.get('name', '')!r} has no concept for class(es) {missing}",
                          where=WHERE, fix=f"{hints} — add them (as a concept or an alias) to a copy of the graph "
                          "and point pretrain.method_options.similarity at that file")
    return out


def concept_similarity(graph: Mapping[str, Any], classes: Sequence[str], mode: str = "shortest_path") -> torch.Tensor:
    """``(K, K)`` similarity of the data's ``classes`` (in their order) through the whole concept graph."""
    check_concept_graph(graph)
    codes = resolve_classes(graph, classes)
    w = float(graph.get("is_a_weight", 0.5))
    spec = {"classes": [str(c["code"]) for c in graph["concepts"]],
            "edges": [[str(c["code"]), p, w] for c in graph["concepts"] for p in _parents(c)]}
    sim, order = ontology_similarity(spec, mode)
    idx = torch.as_tensor([order.index(c) for c in codes])
    return sim[idx][:, idx].contiguous()
