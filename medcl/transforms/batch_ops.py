"""The ops of batched augmentation (:mod:`medcl.transforms.batch`): per-sample parameters, whole-batch math.

Each :class:`Op` mirrors one per-sample transform of the 2D presets (MONAI's or medcl's, named in its docstring):
``params`` draws what that transform draws, per sample, from a :class:`Draw`; ``image`` (and ``mask`` for the
spatial ones) computes what that transform computes for those parameters, for the whole batch at once.

Shapes: images ``(N, C, H, W)`` float; masks ``(N, 1, H, W)`` (spatial ops only, nearest neighbour).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medcl.errors import ConfigError
from medcl.transforms.seeding import derive_seed

#: Ruifrok & Johnston (2001) H&E-DAB stain vectors (as :data:`medcl.transforms.intensity.RGB_FROM_HED`).
_RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
_LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision rounds it (medcl.transforms.intensity)

Params = dict[str, torch.Tensor]


class Draw:
    """Per-sample random numbers for one batch: row ``i`` draws only from its own seed's generators.

    Every row (one image of the batch: one view of one sample) has its own pair of generators, a CPU one for
    parameters and one on the device for noise fields (the same one on CPU), seeded from ``seeds[i]``. What
    a row receives therefore depends on its seed alone, not on which other samples share its batch: a sample
    seeded from its manifest row gets the same views under one process or under DDP, whatever the batch
    composition (:class:`medcl.data.datasets.BatchAugmentedLoader`). Parameters come from a block of
    uniforms drawn per row at once (``block`` at a time) and read column by column: every call draws for all
    rows, so every row reads the same columns of its own stream.

    Args:
        seeds: one 32-bit seed per row, or one int: row ``i`` is then seeded ``derive_seed(seeds, i)``.
        device: where the images live.
        block: uniforms drawn per row at a time.
    """

    def __init__(self, seeds: int | Sequence[int], device: torch.device | str = "cpu", block: int = 64) -> None:
        """Keep the seeds; generators are made on first use."""
        self.device, self.block = torch.device(device), int(block)
        self.seeds = int(seeds) if isinstance(seeds, int) else [int(s) for s in seeds]
        self._gens: dict[int, tuple[torch.Generator, torch.Generator]] = {}
        self._uniforms = torch.empty(0, 0)  # (rows, columns not yet read)

    def generators(self, row: int) -> tuple[torch.Generator, torch.Generator]:
        """Row ``row``'s (CPU, device) generators."""
        if row not in self._gens:
            if isinstance(self.seeds, int):
                seed = derive_seed(self.seeds, row)
            elif row < len(self.seeds):
                seed = self.seeds[row]
            else:
                raise ValueError(f"Draw has {len(self.seeds)} row seeds, row {row} was asked for")
            cpu = torch.Generator().manual_seed(seed)
            dev = cpu if self.device.type == "cpu" else torch.Generator(self.device).manual_seed(seed + 1)
            self._gens[row] = (cpu, dev)
        return self._gens[row]

    def _columns(self, n: int, k: int) -> torch.Tensor:
        """The next ``k`` uniforms of each of ``n`` rows, ``(n, k)`` on the CPU."""
        if self._uniforms.shape[0] not in (0, n):
            raise ValueError(f"one Draw serves one batch: {self._uniforms.shape[0]} rows, then {n}")
        while self._uniforms.shape[1] < k:
            more = torch.stack([torch.rand(self.block, generator=self.generators(i)[0]) for i in range(n)])
            self._uniforms = torch.cat([self._uniforms.reshape(n, -1), more], 1)
        out, self._uniforms = self._uniforms[:, :k], self._uniforms[:, k:]
        return out

    def uniform(self, lo: float, hi: float, n: int, *shape: int) -> torch.Tensor:
        """``U(lo, hi)`` of ``(n, *shape)``, row ``i`` from row ``i``'s stream; float32 on the device."""
        u = self._columns(n, math.prod(shape)).reshape(n, *shape)
        return (u * (hi - lo) + lo).to(self.device)

    def integers(self, lo: int, hi: int, n: int) -> torch.Tensor:
        """``n`` integers uniform in ``[lo, hi)``, one per row (int64, on the device)."""
        k = (self._columns(n, 1)[:, 0] * (hi - lo)).long().clamp_max(hi - lo - 1)
        return (k + lo).to(self.device)

    def gamma(self, k: float, shape: Sequence[int]) -> torch.Tensor:
        """``Gamma(k, scale 1/k)`` (mean 1, std ``1/sqrt(k)``) of ``shape`` ``(n, ...)``, on the device.

        Marsaglia & Tsang, "A simple method for generating gamma variables", ACM TOMS 2000: squeeze-accepted
        cubes of normals (acceptance > 95 % for ``k >= 1``); ``k < 1`` via ``Gamma(k + 1) * U ** (1 / k)``.
        Row ``i`` uses only row ``i``'s device generator.
        """
        shape = tuple(shape)
        n, per_row = shape[0], math.prod(shape[1:])
        boost = k < 1
        a = k + 1.0 if boost else k
        out = self._marsaglia_tsang(a, n, per_row)
        if boost:
            out = out * self._rows(torch.rand, range(n), per_row) ** (1.0 / k)
        return out.reshape(shape) / k

    def _rows(self, fn: Callable[..., torch.Tensor], rows: Sequence[int], m: int) -> torch.Tensor:
        """``fn(m)`` from each of ``rows``' device generators, ``(len(rows), m)``."""
        return torch.stack([fn(m, generator=self.generators(i)[1], device=self.device) for i in rows])

    def _marsaglia_tsang(self, a: float, n: int, per_row: int) -> torch.Tensor:
        """``(n, per_row)`` draws of ``Gamma(a, 1)``, ``a >= 1``.

        Each round draws, for every row still short of values, a block of candidates from that row's generator
        and keeps the accepted ones in order, so a row's values do not depend on the other rows.
        """
        d = a - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * d)
        m = per_row + per_row // 8 + 16  # > 1 / acceptance: one round nearly always fills a row
        out = torch.full((n, per_row), d, device=self.device)  # the mode: only if 64 rounds rejected (never)
        filled = torch.zeros(n, dtype=torch.long, device=self.device)
        for _ in range(64):
            rows = torch.nonzero(filled < per_row).flatten()
            if len(rows) == 0:
                break
            x = self._rows(torch.randn, rows.tolist(), m)
            v = (1 + c * x) ** 3
            u = self._rows(torch.rand, rows.tolist(), m)
            ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-30)))
            pos = filled[rows, None] + ok.long().cumsum(1) - 1  # where each accepted value goes in its row
            keep = ok & (pos < per_row)
            out[rows[:, None].expand_as(pos)[keep], pos[keep]] = (d * v)[keep]
            filled[rows] += keep.sum(1)
        return out


@dataclass(frozen=True)
class Op:
    """One random op: ``params`` draws per-sample values, ``image``/``mask`` apply them to the whole batch.

    Attributes:
        prob: probability that a sample gets the op (drawn per sample).
    """

    prob: float = 1.0

    def params(self, x: torch.Tensor, draw: Draw) -> Params:  # pragma: no cover - overridden
        """Per-sample parameters for images ``x`` ``(N, C, H, W)``."""
        return {}

    def image(self, x: torch.Tensor, q: Params) -> torch.Tensor:  # pragma: no cover - overridden
        """Apply to images ``(N, C, H, W)``."""
        return x

    def mask(self, m: torch.Tensor, q: Params) -> torch.Tensor:
        """Apply to masks ``(N, 1, H, W)``: the identity, except for spatial ops."""
        return m


def as_column(v: torch.Tensor) -> torch.Tensor:
    """``(N,)`` → ``(N, 1, 1, 1)`` for broadcasting over ``(N, C, H, W)``."""
    return v.reshape(-1, 1, 1, 1)


# ------------------------------------------------------------------------------------------------
# spatial


#: fills of the vacated part of a shifted image (:func:`shift_rows`, :func:`medcl.transforms.spatial.shift_along_axis`)
SHIFT_PADDING = ("zeros", "border")


def check_shift_padding(padding_mode: str) -> None:
    """Raise :class:`ConfigError` unless ``padding_mode`` is one of :data:`SHIFT_PADDING`."""
    if padding_mode not in SHIFT_PADDING:
        raise ConfigError(f"unknown padding_mode {padding_mode!r} for a shift", where="transforms.shift_padding",
                          fix=f"use one of {', '.join(SHIFT_PADDING)}")


def shift_rows(x: torch.Tensor, shift: torch.Tensor, dim: int, padding_mode: str = "zeros") -> torch.Tensor:
    """Shift each sample by its own integer ``shift`` ``(N,)`` along ``dim`` (2 = rows), no wrap.

    The vacated rows are zeros or (``padding_mode="border"``) the nearest row that stayed.

    Per sample what :func:`medcl.transforms.spatial.shift_along_axis` does.
    """
    n = x.shape[dim]
    src = torch.arange(n, device=x.device)[None, :] - shift.to(x.device)[:, None]  # (N, n): source index
    valid = (src >= 0) & (src < n)
    view = [x.shape[0]] + [1] * (x.ndim - 1)
    view[dim] = n
    idx = src.clamp(0, n - 1).reshape(view).expand_as(x)
    if padding_mode == "border":
        return x.gather(dim, idx)
    return x.gather(dim, idx) * valid.reshape(view).to(x.dtype)


@dataclass(frozen=True)
class AxisShift(Op):
    """``RandAxisShiftd``: integer shift ``~ U{-m, ..., m}`` along ``axis`` (0 = rows); ``m`` a fraction if < 1.

    ``padding_mode`` ``"zeros"`` or ``"border"`` fills the vacated rows.
    """

    max_shift: float = 0.1
    axis: int = 0
    padding_mode: str = "zeros"

    def __post_init__(self) -> None:
        """Refuse a fill other than zeros or border."""
        check_shift_padding(self.padding_mode)

    def params(self, x: torch.Tensor, draw: Draw) -> Params:
        """The shift in pixels per sample."""
        n = x.shape[2 + self.axis]
        m = int(round(self.max_shift * n)) if self.max_shift < 1 else int(self.max_shift)
        return {"shift": draw.integers(-m, m + 1, len(x)) if m > 0 else torch.zeros(len(x), dtype=torch.long)}

    def image(self, x: torch.Tensor, q: Params) -> torch.Tensor:
        """Shift, the vacated rows filled per ``padding_mode``."""
        return shift_rows(x, q["shift"], 2 + self.axis, self.padding_mode)

    def mask(self, m: torch.Tensor, q: Params) -> torch.Tensor:
        """The same shift."""
        return shift_rows(m, q["shift"], 2 + self.axis, self.padding_mode)


def rotate(x: torch.Tensor, angle: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Rotate each ``(C, H, W)`` sample by its ``angle`` ``(N,)`` radians about the centre (one ``grid_sample``).

    Per sample what :func:`medcl.transforms.spatial.rotate_2d` does (same sign, same aspect handling).
    """
    h, w = x.shape[-2:]
    c, s = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
    zero = torch.zeros_like(c)
    theta = torch.stack([torch.stack([c, s * h / w, zero], 1), torch.stack([-s * w / h, c, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


@dataclass(frozen=True)
class Rotate(Op):
    """``RandRotate2Dd``: in-plane rotation ``~ U(-range_x, range_x)`` radians."""

    range_x: float = 0.0
    padding_mode: str = "zeros"

    def params(self, x: torch.Tensor, draw: Draw) -> Params:
        """The angle per sample."""
        return {"angle": draw.uniform(-self.range_x, self.range_x, len(x))}

    def image(self, x: torch.Tensor, q: Params) -> torch.Tensor:
        """Bilinear rotation."""
        return rotate(x, q["angle"], "bilinear", self.padding_mode)

    def mask(self, m: torch.Tensor, q: Params) -> torch.Tensor:
        """Nearest-neighbour rotation."""
        return rotate(m.float(), q["angle"], "nearest", self.padding_mode).to(m.dtype)


@dataclass(frozen=True)
class Flip(Op):
    """``RandFlipd(spatial_axis=axis)``: flip rows (``axis`` 0) or columns (1)."""

    axis: int = 0

    def params(self, x: torch.Tensor, draw: Draw) -> Params:
        """Nothing to draw beyond ``prob``."""
        return {}

    def image(self, x: torch.Tensor, q: Params) -> torch.Tensor:
        """Flipped."""
        return x.flip(2 + self.axis)

    def mask(self, m: torch.Tensor, q: Params) -> torch.Tensor:
        """Flipped."""
        return m.flip(2 + self.axis)


@dataclass(frozen=True)
class Rot90(Op):
    """``RandRotate90d(max_k=3)``: ``k ~ U{1, 2, 3}`` quarter turns in the image plane (square images)."""

    max_k: int = 3

    def params(self, x: torch.Tensor, draw: Draw) -> Params:
        """The number of quarter turns per sample."""
        return {"k": draw.integers(1, self.max_k + 1, len(x))}

    def image(self, x: torch.Tensor, q: Params) -> torch.Tensor:
        """Each sample turned ``k`` times (``torch.rot90`` over the spatial axes, as MONAI's ``Rotate90``)."""
        if x.shape[-1] != x.shape[-2]:
            raise ConfigError(f"90° rotations of a batch need square images, got {tuple(x.shape[-2:])}",
                              where="transforms.augment_on",
                              fix="crop to a square spatial_size, or use augment_on: sample")
        out = x.clone()
        for k in range(1, self.max_k + 1):
            idx = (q["k"] == k).nonzero().flatten()
            if len(idx):
                out[idx] = torch.rot90(x[idx], k, (2, 3))
        return out

    def mask(self, m: torch.Tensor, q: Params) -> torch.Tensor:
        """The same turns."""
        return self.image(m, q)


def _circle(h: int, w: int, device: torch.device) -> torch.Tensor:
    """The inscribed circle of an ``h × w`` image as a ``(1, 1, H, W)`` 0/1 mask (``FOVMaskd(mode="inscribed")``)."""
    cy, cx, r = (h - 1) / 2, (w - 1) / 2, max(min(h, w) / 2, 1.0)
    yy = torch.arange(h, dtype=torch.float64, device=device)[:, None]
    xx = torch.arange(w, dtype=torch.float64, device=device)[None, :]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2)[None, None]


@dataclass(frozen=True)
class InscribedFOV(Op):
    """``FOVMaskd(mode="inscribed")``: zero everything outside the inscribed circle (every sample)."""

    def params(self, x: torch.Tensor, draw: Draw) -> Params:
        """Nothing to draw."""
        return {}

    def image(self, x: torch.Tensor, q: Params) -> torch.Tensor:
        """Masked."""
        return x * _circle(*x.shape[-2:], x.device).to(x.dtype)

    def mask(self, m: torch.Tensor, q: Params) -> torch.Tensor:
        """Masked."""
        return m * _circle(*m.shape[-2:], m.device).to(m.dtype)


# ------------------------------------------------------------------------------------------------
# intensity


@dataclass(frozen=True)
class ScaleIntensity(Op):
    """MONAI ``RandScaleIntensityd(factors=f)``: ``x * (1 + u)``, ``u ~ U(-f, f)``."""

    factor: float = 0.1

    def params(self, x: torch.Tensor, draw: Draw) -> Params:
        """``u`` per sample."""
        return {"u": draw.uniform(-self.factor, self.factor, len(x))}

    def image(self, x: torch.Tensor, q: Params) -> torch.Tensor:
        """Scaled."""
        return x * (1 + as_column(q["u"]))


@dataclass(frozen=True)
class ShiftIntensity(Op):
    """MONAI ``RandShiftIntensityd(offsets=o)``: ``x + u``, ``u ~ U(-o, o)``."""

    offset: float = 0.1

    def params(self, x: torch.Tensor, draw: Draw) -> Params:
        """``u`` per sample."""
        return {"u": draw.uniform(-self.offset, self.offset, len(x))}

    def image(self, x: torch.Tensor, q: Params) -> torch.Tensor:
        """Shifted."""
        return x + as_column(q["u"])


@dataclass(frozen=True)
class IlluminationGradient(Op):
    """``RandIlluminationGradientd(amount=a)``: ``x * exp(a_row * r + a_col * c)``, slopes ``~ U(-a, a)``."""

    amount: float = 0.3

    def params(self, x: torch.Tensor, draw: Draw) -> Params:
        """Two slopes per sample."""
        return {"a": draw.uniform(-self.amount, self.amount, len(x), 2)}

    def image(self, x: torch.Tensor, q: Params) -> torch.Tensor:
        """Multiplied by the gradient's exponential (every channel alike)."""
        h, w = x.shape[-2:]
        r = torch.linspace(-1.0, 1.0, h, device=x.device)[:, None]
        c = torch.linspace(-1.0, 1.0, w, device=x.device)[None, :]
        a = q["a"].to(x.device)[:, :, None, None]
        return x * torch.exp(a[:, 0] * r + a[:, 1] * c)[:, None].to(x.dtype)


@dataclass(frozen=True)
class Gamma(Op):
    """MONAI ``RandAdjustContrastd(gamma=(lo, hi))``: ``((x - min) / range) ** g * range + min`` per sample."""

    lo: float = 0.8
    hi: float = 1.25

    def params(self, x: torch.Tensor, draw: Draw) -> Params:
        """``g`` per sample."""
        return {"g": draw.uniform(self.lo, self.hi, len(x))}

    def image(self, x: torch.Tensor, q: Params) -> torch.Tensor:
        """Contrast adjusted (min and range over the whole sample, all channels, as MONAI)."""
        flat = x.flatten(1)
        lo = as_column(flat.min(1).values)
        rng = as_column(flat.max(1).values) - lo
        return ((x - lo) / (rng + 1e-7)) ** as_column(q["g"]) * rng + lo


@dataclass(frozen=True)
class Speckle(Op):
    """``RandSpeckleNoised``: ``x * n``, ``n ~ Gamma(k, 1/k)`` per pixel, ``k = 1/std²`` (mean 1, std ``std``)."""

    std: float = 0.1

    def params(self, x: torch.Tensor, draw: Draw) -> Params:
        """A noise field of the batch's shape."""
        return {"noise": draw.gamma(1.0 / self.std**2, x.shape).to(x.dtype)}

    def image(self, x: torch.Tensor, q: Params) -> torch.Tensor:
        """Multiplied by the noise."""
        return x * q["noise"]


def hed_jitter(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """:func:`medcl.transforms.intensity.hed_jitter` per sample: ``x`` ``(N, 3, H, W)``, ``alpha``/``beta`` ``(N, 3)``."""
    od64 = torch.tensor(_RGB_FROM_HED, dtype=torch.float64)
    to_od = od64.to(dtype=x.dtype, device=x.device)
    to_hed = torch.linalg.inv(od64).to(dtype=x.dtype, device=x.device)
    od = -torch.log(x.clamp_min(1e-6)).flatten(2)  # (N, 3, H*W) optical densities
    hed = to_hed.T @ od * alpha.to(x.dtype)[:, :, None] + beta.to(x.dtype)[:, :, None]
    return torch.exp(-(to_od.T @ hed)).clamp(0.0, 1.0).view_as(x)


@dataclass(frozen=True)
class HEDJitter(Op):
    """``RandHEDJitterd`` (Tellez et al. 2018): ``alpha ~ U(1-a, 1+a)``, ``beta ~ U(-b, b)`` per stain channel."""

    alpha: float = 0.05
    beta: float = 0.02

    def params(self, x: torch.Tensor, draw: Draw) -> Params:
        """``alpha`` and ``beta`` ``(N, 3)``."""
        if x.shape[1] != 3:
            raise ConfigError(f"HED stain jitter needs RGB images (3 channels), got {x.shape[1]}",
                              where="transforms.augment_on", fix="use it only on 3-channel histopathology images")
        return {"alpha": draw.uniform(1 - self.alpha, 1 + self.alpha, len(x), 3),
                "beta": draw.uniform(-self.beta, self.beta, len(x), 3)}

    def image(self, x: torch.Tensor, q: Params) -> torch.Tensor:
        """Stain-jittered."""
        return hed_jitter(x, q["alpha"], q["beta"])


def color_jitter(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """:func:`medcl.transforms.intensity.color_jitter` per sample (factors ``(N,)``; clipped after each step)."""
    out = (x * as_column(b)).clamp(0.0, 1.0)
    rgb = x.shape[1] == 3
    luma = torch.as_tensor(_LUMA, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    grey = (out * luma).sum(1, keepdim=True) if rgb else out.mean(1, keepdim=True)
    out = ((out - as_column(grey.mean((1, 2, 3)))) * as_column(c) + as_column(grey.mean((1, 2, 3)))).clamp(0.0, 1.0)
    if rgb:
        grey = (out * luma).sum(1, keepdim=True)
        out = ((out - grey) * as_column(s) + grey).clamp(0.0, 1.0)
    return out


@dataclass(frozen=True)
class ColorJitter(Op):
    """``RandColorJitterd``: brightness, contrast, saturation factors each ``~ U(1-r, 1+r)``."""

    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1

    def params(self, x: torch.Tensor, draw: Draw) -> Params:
        """The three factors per sample."""
        return {k: draw.uniform(1 - r, 1 + r, len(x)) for k, r in
                (("b", self.brightness), ("c", self.contrast), ("s", self.saturation))}

    def image(self, x: torch.Tensor, q: Params) -> torch.Tensor:
        """Jittered."""
        return color_jitter(x, q["b"], q["c"], q["s"])
