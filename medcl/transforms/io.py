"""Loading: the medcl readers wrapped as a MONAI dict transform.

``LoadSampled`` turns ``{"image": "/data/a.nii.gz", ...}`` into
``{"image": MetaTensor (C, *spatial), "image_meta_dict": {...}, ...}``. It calls
:func:`medcl.readers.read` (the reader contract in ``medcl/README.md``) unless a ``reader``
callable is given, and for whole-slide images with a ``"region"`` entry
``(x, y, level, size)`` it reads only that region through
:func:`medcl.readers.wsi.read_region` — never the whole slide.

Values that are already arrays (``np.ndarray`` / ``torch.Tensor``, or objects with ``.array`` and
``.meta`` like a reader ``Sample``) pass through, so synthetic in-memory data uses the same chain.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from medcl.errors import DataError, ReaderError
from medcl.readers import read
from medcl.readers.wsi import read_region

#: Suffix of the key holding a loaded array's metadata (MONAI's ``PostFix.meta()``).
META_SUFFIX = "_meta_dict"


def _default_read(path: str, **kwargs: Any) -> Any:
    return read(path, **kwargs)


def _default_read_region(path: str, region: Sequence[Any], **kwargs: Any) -> Any:
    """Read one WSI region: ``(x, y, level, size)``, or ``(x, y, level, size, out)`` resized to ``out``.

    ``size`` pixels of ``level`` are read, then resized to ``out`` pixels (a tiling plan's tile at a magnification
    between two pyramid levels, or a level up to 3 % coarser than asked): area-averaged when shrinking, bilinear
    when enlarging.
    """
    x, y, level, size, *out = region
    size = int(size) if np.isscalar(size) else tuple(int(s) for s in size)
    sample = read_region(path, int(x), int(y), int(level), size, keep_open=True, **kwargs)
    if out and np.isscalar(size) and int(out[0]) != size:
        t = torch.as_tensor(np.asarray(sample.array, dtype=np.float32))[None]
        n = int(out[0])
        mode = {"mode": "area"} if n < size else {"mode": "bilinear", "align_corners": False}
        resized = torch.nn.functional.interpolate(t, size=(n, n), **mode)[0]
        sample = type(sample)(resized.numpy(), {**sample.meta, "tile_size": n})
    return sample


def to_image_tensor(array: Any, meta: Mapping[str, Any] | None) -> torch.Tensor:
    """Reader output → ``MetaTensor`` (with ``affine`` when ``meta`` has one) or ``float32`` tensor.

    Args:
        array: channel-first array ``(C, *spatial)`` or signal ``(leads, T)``.
        meta: reader metadata; ``meta["affine"]`` (4×4) makes the result a ``MetaTensor`` so MONAI's
            ``Orientationd``/``Spacingd`` see the voxel-to-RAS mapping (the file's own one stays in the meta as
            ``original_affine``, with its ``shape``: what a segmentation is put back on).

    Returns:
        ``MetaTensor`` or ``torch.Tensor``, dtype ``float32``.
    """
    t = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    if not torch.is_floating_point(t) or t.dtype != torch.float32:
        t = t.to(torch.float32)
    if isinstance(t, MetaTensor):
        return t
    if meta and meta.get("affine") is not None:
        affine = torch.as_tensor(np.asarray(meta["affine"], dtype=np.float64))
        safe = {k: v for k, v in meta.items() if k != "affine"}
        safe["original_affine"] = np.asarray(meta["affine"], dtype=np.float64)  # as MONAI's LoadImage keeps it
        return MetaTensor(t, affine=affine, meta=safe)
    return t


class LoadSampled(MapTransform):
    """Read each key's file with the medcl readers (MONAI ``LoadImaged`` counterpart).

    Args:
        keys: keys holding a path (``str``/``Path``), an array, or a reader ``Sample``.
        format: reader format (``None``: detected from the file).
        modality: passed to the reader (``"ct"``, ``"ecg"``, ...).
        reader: ``reader(path, format=..., modality=..., **options) -> Sample``; default
            :func:`medcl.readers.read`.
        region_reader: ``region_reader(path, (x, y, level, size), modality=..., backend=...) -> Sample``
            used when the item has ``region_key`` (``x, y`` in level-0 pixels, ``size`` in pixels of
            ``level``); default :func:`medcl.readers.wsi.read_region`.
        region_key: item key of a WSI region ``(x, y, level, size[, out])``; applies to ``region_keys``; removed
            from the output (read: items with and without one collate alike).
        region_keys: which of ``keys`` the region applies to (default: the first key).
        meta_suffix: metadata goes to ``f"{key}{meta_suffix}"``.
        allow_missing_keys: skip absent keys (e.g. an optional ``"mask"``).
        **options: reader options.

    Raises:
        ReaderError: a file cannot be read (the reader's own error, or a foreign one wrapped).
    """

    def __init__(
        self,
        keys: KeysCollection = ("image",),
        *,
        format: str | None = None,
        modality: str | None = None,
        reader: Callable[..., Any] | None = None,
        region_reader: Callable[..., Any] | None = None,
        region_key: str = "region",
        region_keys: Sequence[str] | None = None,
        meta_suffix: str = META_SUFFIX,
        allow_missing_keys: bool = False,
        **options: Any,
    ) -> None:
        """Store the reader settings; nothing is read until the transform is called."""
        super().__init__(keys, allow_missing_keys)
        self.format = format
        self.modality = modality
        self.reader = reader
        self.region_reader = region_reader
        self.region_key = region_key
        self.region_keys = tuple(region_keys) if region_keys is not None else tuple(self.keys[:1])
        self.meta_suffix = meta_suffix
        self.options = options

    def _read(self, key: Hashable, value: Any, region: Any, own: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """``(array, meta)`` for one item value: a copy of an in-memory value, else the reader's output."""
        # in-memory values are copied: MONAI transforms may work in place (NormalizeIntensity does),
        # which would silently change the caller's array on every pass
        if hasattr(value, "array") and hasattr(value, "meta"):  # a reader Sample
            return np.array(value.array, copy=True), dict(value.meta)
        if isinstance(value, np.ndarray):
            return np.array(value, copy=True), {}
        if isinstance(value, torch.Tensor):
            return value.detach().clone(), {}
        if not isinstance(value, str | Path):
            raise DataError(
                f"item key {key!r} holds a {type(value).__name__}, not a path or an array",
                where=f"LoadSampled[{key}]",
                fix="put a file path (or a channel-first array) under this key",
            )
        path = str(value)
        try:
            if region is not None and key in self.region_keys:
                reader = self.region_reader or _default_read_region
                # a region reader takes only modality/backend: other reader options do not apply
                opts = {k: v for k, v in self.options.items() if k == "backend"}
                sample = reader(path, tuple(region), modality=self.modality, **opts)
            else:
                reader = self.reader or _default_read
                sample = reader(path, format=self.format, modality=self.modality, **{**self.options, **(own or {})})
        except ReaderError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as e:  # a foreign reader's failure
            raise ReaderError(f"cannot read: {type(e).__name__}: {e}", where=path,
                              fix="check the file opens in its usual viewer and its format is supported") from e
        return sample.array, dict(sample.meta)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Load every key of ``data``; returns a new dict.

        Each key becomes a channel-first float32 tensor (:func:`to_image_tensor`: a ``MetaTensor`` when
        its metadata has an affine), and the metadata goes to ``f"{key}{meta_suffix}"``.
        """
        d = dict(data)
        region = d.get(self.region_key)
        for i, key in enumerate(self.key_iterator(d)):
            # a row's own series (manifest `series` column) chooses among the series of its image's DICOM folder
            own = {"series": d["series"]} if i == 0 and d.get("series") not in (None, "") else {}
            array, meta = self._read(key, d[key], region, own)
            d[key] = to_image_tensor(array, meta)
            d[f"{key}{self.meta_suffix}"] = meta
        d.pop("series", None)  # read: not a batch key (rows with and without one must collate alike)
        d.pop(self.region_key, None)
        return d
