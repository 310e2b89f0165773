"""Modality presets and multi-view generation (MONAI dict transforms).

Public API::

    PRESETS                      # {"ct", "mri", "histo", "oct", "fundus", "ecg"} -> Preset
    build_transforms(preset, *, train, views=2, **params) -> monai.transforms.Compose
    preset_info(name) -> {"spatial_dims", "in_channels", "defaults", "summary"}
    get_preset(name) -> Preset; COMMON_DEFAULTS              # the parameters every preset takes
    derive_seed(*parts) -> int; set_transform_seed(transform, seed) -> bool   # (:mod:`.seeding`)

``import medcl.transforms`` does not import MONAI. The transform classes build on MONAI and are imported from
their submodules, e.g. ``from medcl.transforms.views import MultiViewd``: ``LoadSampled``/``META_SUFFIX``
(:mod:`.io`), ``MultiViewd`` (:mod:`.views`), ``MedclCompose``/``PlainCompose`` (:mod:`.compose`),
``RandHEDJitterd``, ``RandColorJitterd``, ``RandSpeckleNoised``, ``FOVMask``/``FOVMaskd`` (:mod:`.intensity`),
``RandAxisShiftd`` (:mod:`.spatial`) and the ECG transforms (:mod:`.signal`).
"""

from __future__ import annotations

from medcl.transforms.presets import (
    COMMON_DEFAULTS,
    PRESETS,
    Preset,
    build_transforms,
    get_preset,
    preset_info,
)
from medcl.transforms.seeding import derive_seed, set_transform_seed

__all__ = ["COMMON_DEFAULTS", "PRESETS", "Preset", "build_transforms", "derive_seed", "get_preset",
           "preset_info", "set_transform_seed"]
