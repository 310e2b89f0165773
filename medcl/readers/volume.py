"""Volume readers: NIfTI (nibabel) and NRRD (pynrrd) → ``(C, X, Y, Z)`` with a RAS affine.

nibabel already gives the RAS voxel-to-world affine (sform, else qform) — the same one MONAI's
``NibabelReader`` returns. NRRD stores ``space directions`` (one vector per axis) and
``space origin`` in the frame named by ``space``; a left-posterior-superior (LPS) frame, the
usual one from ITK/3D Slicer, is flipped to RAS like MONAI's ``NrrdReader(affine_lps_to_ras=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import ReaderError
from medcl.readers.base import Sample, make_meta, pop_options, require_file, to_float32, wrap_error

_FIX_CORRUPT = "re-export the volume (e.g. with 3D Slicer, ITK-SNAP or nibabel), or check the copy is complete"


def _channel_first_4d(data: np.ndarray, path: Path, fmt: str) -> np.ndarray:
    """``(X, Y, Z)`` → ``(1, X, Y, Z)``; ``(X, Y, Z, C)`` (and NIfTI's ``(X, Y, Z, 1, C)``) → ``(C, X, Y, Z)``."""
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim == 3:
        return data[None]
    if data.ndim == 4:
        return np.moveaxis(data, -1, 0)
    raise ReaderError(
        f"{fmt} volume has {data.ndim} dimensions {tuple(data.shape)}; expected 3 (X, Y, Z) or 4 "
        "(X, Y, Z, channels)",
        where=str(path),
        fix="store 2D images as PNG/TIFF, and one 3D (or 3D + channels) volume per file",
    )


def read_nifti(path: Path, *, modality: str | None = None, **options: Any) -> Sample:
    """NIfTI-1/2 (``.nii``, ``.nii.gz``) via nibabel.

    Returns:
        Sample ``(C, X, Y, Z)`` with ``meta["affine"]`` (nibabel's RAS affine) and
        ``meta["spacing"]`` (the first three zooms).
    """
    import nibabel as nib

    pop_options(path, options, (), "nifti")
    require_file(path, "NIfTI file")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:
        raise wrap_error(path, "cannot read NIfTI (corrupt or truncated)", e, _FIX_CORRUPT) from e
    arr = to_float32(_channel_first_4d(data, path, "NIfTI"), path)
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    _check_geometry(path, np.asarray(img.affine, dtype=float), zooms)
    return Sample(
        arr,
        make_meta(
            format="nifti",
            modality=modality,
            array=arr,
            spacing=zooms,
            dtype=img.header.get_data_dtype(),
            source_format=type(img).__name__,
            affine=np.asarray(img.affine, dtype=float),
        ),
    )


def _check_geometry(path: Path, affine: np.ndarray, spacing: list[float]) -> None:
    """Refuse a volume whose affine or voxel size is not finite, or whose affine is singular.

    Every resampling, mask check and mm measurement (HD95) of such a volume would silently be wrong.

    Raises:
        ReaderError: naming the file and what is wrong with its geometry.
    """
    if not np.isfinite(affine).all() or not np.isfinite(spacing).all():
        raise ReaderError("the volume's geometry (affine / voxel size) has NaN or infinite values: a broken header",
                          where=str(path), fix="re-export the volume with its scanner geometry (e.g. from the DICOM "
                          "with dcm2niix), or repair the header's sform/qform")
    if abs(float(np.linalg.det(affine[:3, :3]))) < 1e-12:
        raise ReaderError("the volume's affine is singular (a zero voxel size or collapsed axes)", where=str(path),
                          fix="re-export the volume with its scanner geometry, or repair the header's sform/qform")


#: NRRD space names → per-axis sign that turns them into RAS.
_SPACE_TO_RAS = {
    "right-anterior-superior": (1, 1, 1), "ras": (1, 1, 1),
    "left-posterior-superior": (-1, -1, 1), "lps": (-1, -1, 1),
    "left-anterior-superior": (-1, 1, 1), "las": (-1, 1, 1),
    "scanner-xyz": (1, 1, 1), "3d-right-handed": (1, 1, 1),
}

_NON_SPATIAL_KINDS = {
    "list", "point", "vector", "covariant-vector", "normal", "stub", "scalar", "complex",
    "2-vector", "3-color", "rgb-color", "hsv-color", "xyz-color", "4-color", "rgba-color",
    "3-vector", "3-gradient", "3-normal", "4-vector", "quaternion", "2d-symmetric-matrix",
    "2d-masked-symmetric-matrix", "2d-matrix", "2d-masked-matrix", "3d-symmetric-matrix",
    "3d-masked-symmetric-matrix", "3d-matrix", "3d-masked-matrix",
}


def _nrrd_affine(path: Path, header: dict, dirs, spatial_axes: list[int], space: str) -> tuple[np.ndarray, list[float]]:
    """The RAS affine and voxel spacing of an NRRD volume.

    Args:
        path: the file, for error messages.
        header: the pynrrd header.
        dirs: its ``space directions`` (None when absent: then ``spacings`` give a diagonal affine).
        spatial_axes: the file's three spatial axes, in array order.
        space: its lower-cased ``space`` (``""`` when absent: the directions are kept as they are).

    Returns:
        ``(affine, spacing)``: 4×4 voxel → RAS mm and ``[sx, sy, sz]``.

    Raises:
        ReaderError: directions that are not three 3-vectors, or an unsupported ``space``.
    """
    if dirs is not None:
        directions = np.asarray([np.asarray(dirs[ax], dtype=float) for ax in spatial_axes])  # (3 axes, 3)
        if directions.shape != (3, 3):
            raise ReaderError(
                f"NRRD 'space directions' have shape {directions.shape}, expected 3 vectors of 3",
                where=str(path), fix="write the volume with a 3D space (e.g. space: left-posterior-superior)",
            )
        origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
        if origin.shape != (3,) or not np.all(np.isfinite(origin)):
            origin = np.zeros(3)
        affine = np.eye(4)
        affine[:3, :3] = directions.T  # column j = direction of array axis j
        affine[:3, 3] = origin
        if space:
            if space not in _SPACE_TO_RAS:
                raise ReaderError(
                    f"NRRD space {space!r} is not supported", where=str(path),
                    fix=f"use one of: {', '.join(sorted(_SPACE_TO_RAS))}",
                )
            affine = np.diag([*_SPACE_TO_RAS[space], 1.0]) @ affine
        spacing = [float(np.linalg.norm(directions[i])) for i in range(3)]
    else:
        sp = header.get("spacings")
        spacing = [float(sp[ax]) if sp is not None and np.isfinite(sp[ax]) else 1.0 for ax in spatial_axes]
        affine = np.diag([*spacing, 1.0])
    return affine, spacing


def read_nrrd(path: Path, *, modality: str | None = None, **options: Any) -> Sample:
    """NRRD (``.nrrd``, ``.nhdr``) via pynrrd.

    The affine columns are the ``space directions`` of the three spatial axes and its
    translation the ``space origin``, flipped to RAS when ``space`` is LPS (or LAS). A
    non-spatial axis (``kinds`` vector/RGB/list, or a ``none`` direction) becomes the channel axis.

    Returns:
        Sample ``(C, X, Y, Z)`` with ``meta["affine"]`` (RAS) and ``meta["spacing"]``.
    """
    import nrrd

    pop_options(path, options, (), "nrrd")
    require_file(path, "NRRD file")
    try:
        data, header = nrrd.read(str(path), index_order="F")
    except Exception as e:
        raise wrap_error(path, "cannot read NRRD (corrupt or truncated)", e, _FIX_CORRUPT) from e
    data = np.asarray(data)
    kinds = [str(k).lower() for k in header.get("kinds", [])] or ["domain"] * data.ndim
    dirs = header.get("space directions", None)
    spatial = []
    for ax in range(data.ndim):
        kind = kinds[ax] if ax < len(kinds) else "domain"
        no_dir = False
        if dirs is not None:
            row = dirs[ax]
            no_dir = row is None or (np.ndim(row) > 0 and not np.all(np.isfinite(np.asarray(row, dtype=float))))
        spatial.append(kind not in _NON_SPATIAL_KINDS and not no_dir)
    channel_axes = [ax for ax, s in enumerate(spatial) if not s]
    if sum(spatial) != 3 or len(channel_axes) > 1:
        raise ReaderError(
            f"NRRD has {data.ndim} axes ({', '.join(kinds)}) of which {sum(spatial)} are spatial; "
            "expected 3 spatial axes and at most one channel axis",
            where=str(path),
            fix="store one 3D (or 3D + channels) volume per file; 2D images go in PNG/TIFF",
        )
    spatial_axes = [ax for ax, s in enumerate(spatial) if s]
    if channel_axes:
        arr = np.moveaxis(data, channel_axes[0], 0)
    else:
        arr = data[None]
    arr = to_float32(arr, path)

    space = str(header.get("space", "") or "").lower()
    affine, spacing = _nrrd_affine(path, header, dirs, spatial_axes, space)
    _check_geometry(path, affine, spacing)
    return Sample(
        arr,
        make_meta(
            format="nrrd",
            modality=modality,
            array=arr,
            spacing=spacing,
            dtype=data.dtype,
            source_format=f"NRRD ({header.get('encoding', 'raw')})",
            affine=affine,
            space=space or None,
        ),
    )
