"""The layers of ``docs/architecture.md``, enforced: a module imports only from its own floor or the floors below,
plus the "never" rules between neighbours. Function-level imports count as much as top-level ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "medcl"

#: floor -> module prefixes (the longest prefix decides); keep in step with docs/architecture.md
FLOORS: dict[int, tuple[str, ...]] = {
    0: ("medcl.errors", "medcl.lookup", "medcl.modalities", "medcl.metric_keys", "medcl.phi", "medcl.shipped",
        "medcl.checkpoint_file", "medcl.logs"),
    1: ("medcl.readers", "medcl.distributed", "medcl.config", "medcl.text"),
    2: ("medcl.data", "medcl.transforms", "medcl.networks", "medcl.losses", "medcl.metrics"),
    3: ("medcl.methods", "medcl.engine"),
    4: ("medcl.tasks",),
    5: ("medcl.tracking",),
    6: ("medcl.stages", "medcl.reporting"),
    7: ("medcl.pipeline", "medcl.console", "medcl.predict", "medcl.predict_io", "medcl.predict_model",
        "medcl.predict_masks", "medcl.predict_fusion", "medcl.evaluate", "medcl.demo", "medcl.cli", "medcl.__main__"),
}
#: importer prefix -> prefixes it must never import, although they are on its floor or below
NEVER: dict[str, tuple[str, ...]] = {
    "medcl.transforms": ("medcl.data",),  # readers are below both; data builds datasets from transforms
    "medcl.networks": ("medcl.losses", "medcl.metrics", "medcl.data", "medcl.transforms"),
    "medcl.losses": ("medcl.networks", "medcl.metrics", "medcl.data", "medcl.transforms"),
    "medcl.metrics": ("medcl.networks", "medcl.losses", "medcl.data", "medcl.transforms"),
    "medcl.reporting": ("medcl.stages", "medcl.engine", "medcl.methods", "medcl.networks", "medcl.tasks",
                        "medcl.data", "medcl.transforms"),  # the report reads MLflow only
    "medcl.engine": ("medcl.methods",),  # the loop trains any module with forward(batch) -> {"loss"}
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _floor(module: str) -> tuple[int, str]:
    best = max(((f, p) for f, ps in FLOORS.items() for p in ps if module == p or module.startswith(p + ".")),
               key=lambda fp: len(fp[1]), default=None)
    if best is None:
        raise AssertionError(f"{module} is on no floor: add it to FLOORS and docs/architecture.md")
    return best


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, medcl module)`` of every import of medcl in ``path`` (``from medcl import x`` -> ``medcl.x``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("medcl.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "medcl":  # a submodule; other names (__version__) are the root package's, floor 0
                found += [(node.lineno, f"medcl.{a.name}") for a in node.names
                          if (PACKAGE / f"{a.name}.py").is_file() or (PACKAGE / a.name).is_dir()]
            elif node.module.startswith("medcl."):
                found.append((node.lineno, node.module))
    return found


def violations() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module(path)
        if me == "medcl":
            continue
        floor, prefix = _floor(me)
        for line, target in _imports(path):
            t_floor, t_prefix = _floor(target)
            where = f"{path.relative_to(ROOT)}:{line}: {me} (floor {floor}) imports {target} (floor {t_floor})"
            if t_floor > floor:
                out.append(where + " — a higher floor")
            for importer, banned in NEVER.items():
                if (me == importer or me.startswith(importer + ".")) and any(
                        target == b or target.startswith(b + ".") for b in banned):
                    out.append(where + f" — {importer} never imports {target}")
    return out


def test_no_module_imports_a_higher_floor_or_a_banned_neighbour():
    assert violations() == []


def test_the_checker_catches_a_violation(tmp_path, monkeypatch):
    """Guard: a networks module importing the engine (or the report package importing a stage) is caught."""
    fake = PACKAGE / "networks" / "_layer_probe.py"
    fake.write_text("def f():\n    from medcl.engine.loop import fit\n    from medcl import tracking\n")
    try:
        found = violations()
    finally:
        fake.unlink()
    assert any("_layer_probe.py:2" in v and "a higher floor" in v for v in found), found
    assert any("_layer_probe.py:3" in v and "medcl.tracking" in v for v in found), found


def test_every_floor_is_in_the_architecture_doc():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for prefixes in FLOORS.values():
        for p in prefixes:
            name = p.removeprefix("medcl.")
            assert f"`{name}" in doc, f"docs/architecture.md does not place {p}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_is_on_a_floor(path):
    if _module(path) != "medcl":
        _floor(_module(path))


def test_one_module_imports_each_edge_library():
    """difflib only in medcl/lookup.py (one "did you mean"), mlflow only in tracking/, torch.distributed only in
    distributed.py."""
    owners = {"difflib": ("medcl.lookup",), "mlflow": ("medcl.tracking",), "torch.distributed": ("medcl.distributed",)}
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                for lib, allowed in owners.items():
                    if (name == lib or name.startswith(lib + ".")) and not any(
                            me == a or me.startswith(a + ".") for a in allowed):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert bad == []
