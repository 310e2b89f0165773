"""Pipeline configuration: typed schema, YAML includes, ``--set`` overrides."""

from medcl.config.loader import (
    apply_overrides,
    deep_merge,
    dump_yaml,
    flatten,
    load_config,
    load_raw,
    pipeline_key,
    resolved_dict,
    validate,
)
from medcl.config.schema import STAGE_ORDER, PipelineConfig

__all__ = [
    "PipelineConfig", "STAGE_ORDER", "apply_overrides", "deep_merge", "dump_yaml", "flatten",
    "load_config", "load_raw", "pipeline_key", "resolved_dict", "validate",
]
