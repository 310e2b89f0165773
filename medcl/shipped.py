"""Where the files medcl ships next to its code are: ``pipelines/``, ``configs/`` and ``notebooks/``.

In a checkout (or an editable install) they are the repository's own folders. A wheel
(``pip install .``, the Docker image's runtime stage) carries copies under ``medcl/resources/`` (``setup.py``
copies them at build time), so ``medcl demo``, ``medcl report`` and the shipped pipelines work without the
checkout; the pipelines' relative ``include:`` paths hold in both layouts.
"""

from __future__ import annotations

import os
from pathlib import Path

from medcl.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent


def shipped(name: str, *, env: str | None = None, must_have: str = "") -> Path:
    """The shipped folder ``name`` (``pipelines``, ``configs``, ``notebooks``) that contains ``must_have``.

    Looked for in order: the environment variable ``env`` (a path), the installed package's
    ``resources/<name>``, the checkout's ``<name>``, and ``./<name>``.

    Raises:
        ConfigError: none of them has it (the message lists where it looked).
    """
    candidates = [Path(os.environ[env])] if env and os.environ.get(env) else []
    candidates += [_PACKAGE / "resources" / name, _PACKAGE.parent / name, Path.cwd() / name]
    for c in candidates:
        if (c / must_have).exists() if must_have else c.is_dir():
            return c
    raise ConfigError(f"cannot find medcl's {name}/ folder{' with ' + must_have if must_have else ''} (looked in "
                      f"{', '.join(str(c) for c in candidates)})", where="medcl installation",
                      fix="reinstall medcl (`pip install .` ships it), run from the checkout"
                      + (f", or set {env} to the folder" if env else ""))
