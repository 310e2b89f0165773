"""Every key the config schema accepts is read by the code (an accepted key must have an effect).

The check walks ``PipelineConfig`` and looks, for each leaf key, for an attribute access ``.<name>`` or a string
``"<name>"`` in medcl's code outside ``medcl/config/``. A key nothing reads is silently ignored — the failure names
it. Keys that only describe (shown in the plan and the report) are listed in :data:`INFORMATIONAL` with the reason.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from medcl.config.schema import PipelineConfig

ROOT = Path(__file__).resolve().parents[2]
#: keys with no behaviour of their own, and why they are accepted
INFORMATIONAL: dict[str, str] = {}


def _leaves(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _leaves(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", name


def test_every_config_key_is_read_somewhere_or_documented_as_informational():
    code = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "medcl").rglob("*.py")
                     if "config" not in p.relative_to(ROOT / "medcl").parts[:1])
    unread = [key for key, name in _leaves(PipelineConfig)
              if key not in INFORMATIONAL and not re.search(rf"\.{name}\b|[\"']{name}[\"']", code)]
    assert unread == [], f"accepted but never read: {unread}"


def test_the_walk_sees_every_section():
    keys = {k for k, _ in _leaves(PipelineConfig)}
    for k in ("data.reader_options", "pretrain.samples_per_patient", "detect.normal_class", "segment.network"):
        assert k in keys
    assert len(keys) > 100
