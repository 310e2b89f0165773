"""2D image reader: PNG / JPEG / BMP via Pillow, TIFF via tifffile → ``(C, H, W)`` float32.

Values keep their stored range (0..255 for 8-bit, 0..65535 for 16-bit); greyscale is ``C = 1``,
colour ``C = 3`` (an opaque alpha dropped — a transparent one is an error —, palette expanded). Pillow silently truncates 16-bit *colour* PNGs
to 8 bits, so those are decoded with imagecodecs instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import ReaderError
from medcl.readers.base import Sample, make_meta, pop_options, require_file, to_float32, wrap_error

_FIX_CORRUPT = "re-export the image, or check that the copy is complete (a truncated download?)"
_TIFF_SUFFIXES = (".tif", ".tiff")


def _png_is_16bit_colour(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(29)
    if len(head) < 29 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return False
    bit_depth, colour_type = head[24], head[25]
    return bit_depth == 16 and colour_type in (2, 6)  # RGB, RGBA


def _to_channel_first(arr: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """Image array with axes string (tifffile style: Y, X, S = samples, other = frames) → (C, [F,] H, W)."""
    if "S" in axes:
        s = axes.index("S")
        arr = np.moveaxis(arr, s, -1)
        axes = axes[:s] + axes[s + 1:] + "S"
        n = arr.shape[-1]
        if n in (2, 4):  # grey + alpha, RGB + alpha: an opaque alpha carries nothing and is dropped
            alpha = arr[..., n - 1]
            full = np.iinfo(arr.dtype).max if np.issubdtype(arr.dtype, np.integer) else 1.0
            if not bool((alpha == full).all()):
                raise ReaderError(
                    f"image has transparency: its alpha channel is not fully opaque ({int((alpha != full).sum())} "
                    "pixels), and medcl does not composite it onto a background (pixel values would depend on it)",
                    where=str(path), fix="flatten the image onto its background (e.g. save it without alpha) and "
                    "re-export it")
            arr = arr[..., : n - 1]
        elif n not in (1, 3):
            raise ReaderError(
                f"image has {n} samples per pixel; expected 1 (grey), 3 (RGB) or 4 (RGBA)",
                where=str(path), fix="convert it to greyscale or RGB",
            )
        arr = np.moveaxis(arr, -1, 0)  # (C, ..., H, W)
    else:
        arr = arr[None]
    if arr.ndim == 3:
        return arr
    if arr.ndim == 4:  # a stack of frames (e.g. OCT B-scans in one TIFF): (C, F, H, W)
        return arr
    raise ReaderError(
        f"image has {arr.ndim - 1} non-channel dimensions {tuple(arr.shape[1:])} ({axes}); expected 2 (H, W) "
        "or 3 (frames, H, W)",
        where=str(path), fix="store one 2D image (or one stack of frames) per file",
    )


def _tiff_spacing_mm(page) -> list[float] | None:
    """``[row_mm, col_mm]`` from TIFF X/YResolution and ResolutionUnit (2 = inch, 3 = cm)."""
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    xres, yres = tags.get("XResolution"), tags.get("YResolution")
    if unit is None or xres is None or yres is None:
        return None
    per = {2: 25.4, 3: 10.0}.get(int(unit.value))
    if per is None:
        return None
    try:
        x = xres.value[0] / xres.value[1]
        y = yres.value[0] / yres.value[1]
    except (TypeError, ZeroDivisionError, IndexError):
        return None
    if x <= 0 or y <= 0:
        return None
    return [per / y, per / x]


def read_image(path: Path, *, modality: str | None = None, **options: Any) -> Sample:
    """PNG / JPEG / BMP / TIFF (single 2D image or a stack of frames).

    Returns:
        Sample ``(C, H, W)`` (``(C, F, H, W)`` for a multi-page TIFF stack); ``meta["spacing"]``
        ``[row_mm, col_mm]`` from the file's resolution (DPI / TIFF resolution) or None.
    """
    pop_options(path, options, (), "image")
    require_file(path, "image file")
    if path.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(str(path)) as tif:
                series = tif.series[0]
                data = series.asarray()
                axes = series.axes
                spacing = _tiff_spacing_mm(series.keyframe)
        except Exception as e:
            raise wrap_error(path, "cannot read TIFF (corrupt or truncated)", e, _FIX_CORRUPT) from e
        # tifffile axes: Y X, S = samples per pixel, other letters (I, Q, Z, T) = frames
        arr = _to_channel_first(np.asarray(data), axes, path)
        fmt = "TIFF"
        dtype = data.dtype
    elif path.suffix.lower() == ".png" and _png_is_16bit_colour(path):
        import imagecodecs

        try:
            data = imagecodecs.png_decode(path.read_bytes())
        except Exception as e:
            raise wrap_error(path, "cannot decode PNG (corrupt or truncated)", e, _FIX_CORRUPT) from e
        arr = _to_channel_first(np.asarray(data), "YXS", path)
        fmt, dtype, spacing = "PNG", data.dtype, None
    else:
        from PIL import Image

        try:
            with Image.open(str(path)) as im:
                im.load()
                fmt = im.format or "image"
                dpi = im.info.get("dpi")
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode == "CMYK" or im.mode == "YCbCr":
                    im = im.convert("RGB")
                elif im.mode == "1":
                    im = im.convert("L")
                data = np.asarray(im)
        except Exception as e:
            raise wrap_error(path, "cannot decode image (corrupt, truncated or not an image)", e,
                             _FIX_CORRUPT) from e
        arr = _to_channel_first(data, "YXS" if data.ndim == 3 else "YX", path)
        dtype = data.dtype
        spacing = None
        if dpi and all(float(d) > 1 for d in dpi[:2]):
            spacing = [25.4 / float(dpi[1]), 25.4 / float(dpi[0])]
    out = to_float32(arr, path)
    return Sample(
        out,
        make_meta(format="image", modality=modality, array=out, spacing=spacing, dtype=dtype,
                  source_format=fmt, channels=int(out.shape[0])),
    )
