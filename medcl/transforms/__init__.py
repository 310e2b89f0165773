"""Modality presets and multi-view generation (MONAI dict transforms).

Public API::

    PRESETS                      # {"ct", "mri", "histo", "oct", "fundus", "ecg"} -> Preset
    build_transforms(preset, *, train, views=2, **params) -> monai.transforms.Compose
    preset_info(name) -> {"spatial_dims", "in_channels", "defaults", "summary"}

Transform classes (imported on first use — ``import medcl.transforms`` does not import MONAI):
``LoadSampled`` (:mod:`.io`), ``MultiViewd`` (:mod:`.views`), ``RandHEDJitterd``,
``RandColorJitterd``, ``RandSpeckleNoised``, ``FOVMask``/``FOVMaskd`` (:mod:`.intensity`),
``RandAxisShiftd`` (:mod:`.spatial`), ECG transforms (:mod:`.signal`), and the seeding helpers
``derive_seed``/``set_transform_seed`` (:mod:`.seeding`).
"""

from __future__ import annotations

import importlib
from typing import Any

from medcl.transforms.presets import (
    COMMON_DEFAULTS,
    PRESETS,
    Preset,
    build_transforms,
    get_preset,
    preset_info,
)
from medcl.transforms.seeding import derive_seed, set_transform_seed

#: name → submodule, for the lazily imported transform classes.
_LAZY: dict[str, str] = {
    "LoadSampled": "io", "META_SUFFIX": "io",
    "MultiViewd": "views", "MedclCompose": "compose",
    "RandHEDJitterd": "intensity", "RandColorJitterd": "intensity", "RandSpeckleNoised": "intensity",
    "FOVMask": "intensity", "FOVMaskd": "intensity",
    "RandAxisShiftd": "spatial",
    "ResampleSignald": "signal", "NormalizeLeadsd": "signal", "CenterTimeCropd": "signal",
    "RandTimeCropd": "signal", "RandAmplitudeScaled": "signal", "RandBaselineWanderd": "signal",
    "RandLeadDropoutd": "signal", "RandLeadGroupd": "signal",
}

__all__ = ["COMMON_DEFAULTS", "PRESETS", "Preset", "build_transforms", "derive_seed", "get_preset",
           "preset_info", "set_transform_seed", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"medcl.transforms.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'medcl.transforms' has no attribute {name!r}")
