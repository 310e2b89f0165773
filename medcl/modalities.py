"""The modalities medcl knows, in one place.

Every list of them (manifest checks, config schema, CLI, demo) is read from here.

A modality decides how a file is read and shaped (``medcl/README.md``, array conventions), which transform preset
and encoder a pipeline uses, and which demo data ``medcl data synth`` writes.
"""

from __future__ import annotations

from typing import Literal, get_args

#: the config schema's type of a modality name
Modality = Literal["ct", "mri", "histo", "oct", "fundus", "ecg"]
#: every modality, in the order messages list them
MODALITIES: tuple[str, ...] = get_args(Modality)
#: 2D images ``(C, H, W)``
IMAGE_2D: tuple[str, ...] = ("histo", "oct", "fundus")
#: 3D volumes ``(1, X, Y, Z)``
VOLUME_3D: tuple[str, ...] = ("ct", "mri")
#: signals ``(leads, T)``
SIGNAL_1D: tuple[str, ...] = ("ecg",)
