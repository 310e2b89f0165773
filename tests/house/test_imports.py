"""How medcl imports itself (``docs/architecture.md``, "Floors"): every name comes from a visible import.

* An import of medcl's own modules inside a function is allowed only to keep a heavy third-party import (MONAI,
  timm, mlflow, torch, scipy.stats …) off a light module's import path — ``medcl --help`` above all — and says so:
  a ``# lazy: <reason>`` comment on its line (or on a comment line directly above).
* No string-named imports (``importlib.import_module``, ``__import__``) and no module ``__getattr__``: a reader
  finds where a name comes from by reading the imports. ``importlib.metadata`` is fine.
* ``import medcl.cli`` (and the light packages) load none of the heavy libraries, checked in a fresh interpreter.
"""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "medcl"

def _medcl_module(node: ast.AST) -> str | None:
    """The medcl module an import statement names (``from medcl import x`` -> ``medcl``), else ``None``."""
    if isinstance(node, ast.ImportFrom):
        if node.level:  # a relative import is always one of medcl's own
            return "." * node.level + (node.module or "")
        if node.module and (node.module == "medcl" or node.module.startswith("medcl.")):
            return node.module
    elif isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "medcl" or alias.name.startswith("medcl."):
                return alias.name
    return None


def _comments(source: str) -> dict[int, str]:
    """Line number -> the comment on that line."""
    return {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT}


def unexplained_lazy_imports(source: str, name: str = "<string>") -> list[tuple[int, str]]:
    """``(line, module)`` of every function-level import of medcl in ``source`` without a ``# lazy:`` reason."""
    tree = ast.parse(source, name)
    lines = source.splitlines()
    comments = _comments(source)

    def explained(node: ast.stmt) -> bool:
        own = range(node.lineno, (node.end_lineno or node.lineno) + 1)
        above = node.lineno - 1
        candidates = [comments.get(n, "") for n in own]
        if above >= 1 and lines[above - 1].lstrip().startswith("#"):
            candidates.append(comments.get(above, ""))
        return any(c.startswith("# lazy:") and len(c.removeprefix("# lazy:").strip()) >= 4 for c in candidates)

    found, seen = [], set()
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        for node in ast.walk(fn):
            module = _medcl_module(node)
            if module is None or id(node) in seen:
                continue
            seen.add(id(node))
            if not explained(node):
                found.append((node.lineno, module))
    return sorted(found)


def hidden_imports(source: str, name: str = "<string>") -> list[tuple[int, str]]:
    """``(line, what)`` of each string-named import (``importlib.import_module``, ``__import__``) and module
    ``__getattr__`` in ``source``."""
    tree = ast.parse(source, name)
    found = [(node.lineno, "module __getattr__") for node in tree.body
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "__getattr__"]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "import_module":
            found.append((node.lineno, "importlib.import_module"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("importlib") and any(
                a.name == "import_module" for a in node.names):
            found.append((node.lineno, "from importlib import import_module"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            found.append((node.lineno, "__import__"))
    return sorted(found)


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_function_level_medcl_import_says_why_it_is_lazy():
    bad = []
    for path in _sources():
        rel = str(path.relative_to(ROOT))
        for line, module in unexplained_lazy_imports(path.read_text(), rel):
            bad.append(f"{rel}:{line}: imports {module} inside a function without a '# lazy: <reason>' "
                           "comment — move it to the top, or name the heavy import (or cycle) it avoids")
    assert bad == []


def test_no_string_named_imports_or_module_getattr():
    bad = [f"{path.relative_to(ROOT)}:{line}: {what}" for path in _sources()
           for line, what in hidden_imports(path.read_text(), str(path))]
    assert bad == []


def test_the_checkers_catch_what_they_should():
    src = '''
import importlib
from importlib.metadata import version

from medcl.errors import MedclError


def f():
    from medcl.tracking import pyfunc  # lazy: mlflow
    # lazy: monai
    from medcl.transforms.views import MultiViewd
    from medcl.engine import loop
    import medcl.phi
    x = 1  # lazy: a comment on code does not cover the next line
    from medcl import distributed
    from medcl.transforms.io import (  # lazy: monai
        LoadSampled,
    )
    return importlib.import_module("medcl.networks"), __import__("os"), version


def __getattr__(name):
    return name
'''
    assert unexplained_lazy_imports(src) == [(12, "medcl.engine"), (13, "medcl.phi"), (15, "medcl")]
    assert hidden_imports(src) == [(19, "__import__"), (19, "importlib.import_module"), (22, "module __getattr__")]


HEAVY = ("torch", "monai", "mlflow", "timm", "sklearn", "scipy", "pandas", "matplotlib", "papermill", "pydicom")


@pytest.mark.parametrize("module,banned", [
    ("medcl.cli", (*HEAVY, "numpy", "pydantic")),  # `medcl --help` answers at once
    ("medcl.config", ("torch", "monai", "mlflow", "timm")),
    ("medcl.transforms", ("torch", "monai", "mlflow", "timm")),
    ("medcl.networks", ("monai", "timm", "mlflow")),
    ("medcl.tracking", ("mlflow", "torch")),
])
def test_light_modules_stay_light(module, banned):
    """Run in a fresh interpreter, so what other tests imported does not count."""
    code = f"import sys, {module}; print(' '.join(m for m in {banned!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.stdout.split() == [], f"import {module} loads {out.stdout.split()}"
