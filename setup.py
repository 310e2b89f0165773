"""Build hook: a wheel carries the shipped pipelines, presets and report notebook (medcl/shipped.py).

Everything else is declared in pyproject.toml. An editable install uses the checkout's own folders.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = {"pipelines": "*.yaml", "configs": "*.yaml", "notebooks": "report.ipynb"}


class BuildPyWithResources(build_py):
    """``build_py`` that also copies ``pipelines/``, ``configs/`` and the report notebook into
    ``medcl/resources/`` of the build (not in editable mode: there the checkout's folders are used)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name, pattern in SHIPPED.items():
            for src in sorted((ROOT / name).rglob(pattern)):
                dst = Path(self.build_lib) / "medcl" / "resources" / src.relative_to(ROOT)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)


setup(cmdclass={"build_py": BuildPyWithResources})
