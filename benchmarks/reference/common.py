"""What both reference loops share: reading a medcl manifest with medcl's patient split, augmenting, scoring.

Plain code on purpose — torch, timm, MONAI's 1D ResNet for ECG, PIL, wfdb, pydicom, nibabel, scikit-learn; no
medcl import — so that it is an independent yardstick for medcl's recipes. 2D images (PNG/JPEG/TIFF), WFDB ECGs,
and CT/MRI volumes (a DICOM series folder or a NIfTI file), each resized to one grid without regard to spacing.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODALITIES = ("oct", "fundus", "histo", "ecg", "ct", "mri")
VOLUMES = ("ct", "mri")


def load_split(manifest: Path, split_csv: Path, label_column: str, classes: list[str],
               size: int, depth: int = 16) -> dict[str, tuple[torch.Tensor, np.ndarray, np.ndarray]]:
    """``{split: (x, y, patient)}`` — all samples in memory: 2D ``(N, C, size, size)`` in [0, 1], CT/MRI
    ``(N, 1, depth, size, size)``, ECG ``(N, leads, T)`` standardised per lead; ``y`` ``(N,)`` class index or
    ``(N, K)`` multi-hot."""
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(split_csv, newline="", encoding="utf-8") as f:
        split = {int(r["row"]): (r["split"], r["patient"]) for r in csv.DictReader(f)}
    out: dict[str, list] = {"train": [], "val": [], "test": []}
    for i, r in enumerate(rows, start=1):
        labels = [v for v in r[label_column].split(";") if v]
        if i not in split or not labels:
            continue
        x = read(manifest.parent / r["path"], r["modality"], size, depth)
        y = np.isin(classes, labels).astype(np.float32) if r["modality"] == "ecg" else classes.index(labels[0])
        out[split[i][0]].append((x, y, split[i][1]))
    n = min(t[0].shape[-1] for v in out.values() for t in v)  # ECG records of different lengths: the shortest
    return {s: (torch.stack([torch.as_tensor(t[0][..., :n]) for t in v]), np.array([t[1] for t in v]),
                np.array([t[2] for t in v])) for s, v in out.items() if v}


def read(path: Path, modality: str, size: int, depth: int = 16) -> np.ndarray:
    if modality in VOLUMES:
        return read_volume(path, modality, size, depth)
    if modality == "ecg":
        import wfdb

        sig = wfdb.rdrecord(str(path.with_suffix(""))).p_signal.T.astype(np.float32)  # (leads, T) in mV
        return (sig - sig.mean(1, keepdims=True)) / (sig.std(1, keepdims=True) + 1e-6)
    from PIL import Image

    img = Image.open(path)
    img = img.convert("L" if modality == "oct" else "RGB").resize((size, size), Image.BILINEAR)
    a = np.asarray(img, dtype=np.float32) / 255.0
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def read_volume(path: Path, modality: str, size: int, depth: int) -> np.ndarray:
    """``(1, depth, size, size)``: CT in a soft-tissue window (level 40 HU, width 400) to [0, 1], MRI divided by
    its 99.5th percentile; resized (trilinear) without regard to the voxel spacing."""
    if path.is_dir():  # a DICOM series: slices ordered along the slice normal, stored values to HU
        import pydicom

        ds = [pydicom.dcmread(f) for f in sorted(path.iterdir()) if f.is_file()]
        normal = np.cross(*np.reshape(np.asarray(ds[0].ImageOrientationPatient, float), (2, 3)))
        ds.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
        v = np.stack([d.pixel_array * float(getattr(d, "RescaleSlope", 1.0)) + float(getattr(d, "RescaleIntercept", 0.0))
                      for d in ds]).astype(np.float32)  # (slices, rows, columns)
    else:  # NIfTI (i, j, k) -> (k, j, i)
        import nibabel

        v = np.asarray(nibabel.load(str(path)).get_fdata(), dtype=np.float32).transpose(2, 1, 0)
    v = np.clip((v + 160.0) / 400.0, 0, 1) if modality == "ct" else v / (np.percentile(v, 99.5) + 1e-6)
    t = F.interpolate(torch.as_tensor(np.ascontiguousarray(v))[None, None], size=(depth, size, size),
                      mode="trilinear", align_corners=False)
    return t[0].numpy()


class CNN3d(nn.Sequential):
    """Five stages of two 3×3×3 conv-BN-ReLU (widths 8 … 128, the stages after the first halving the grid), global
    average pooling: the size of medcl's 3D demo encoder, written plainly."""

    def __init__(self, in_channels: int, widths: tuple[int, ...] = (8, 16, 32, 64, 128)) -> None:
        layers, c = [], in_channels
        for k, w in enumerate(widths):
            for j in range(2):
                layers += [nn.Conv3d(c, w, 3, stride=2 if k and not j else 1, padding=1, bias=False),
                           nn.BatchNorm3d(w), nn.ReLU(inplace=True)]
                c = w
        super().__init__(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.dim = c


def encoder(modality: str, in_channels: int, arch: str, output_stride: int = 32) -> nn.Module:
    """Features ``(B, D)``; ``.dim`` = D. timm for images (no pretrained weights; ``output_stride`` 16 dilates
    the last stage, as medcl does for small images), MONAI's 1D ResNet for ECG, :class:`CNN3d` for CT/MRI."""
    if modality in VOLUMES:
        return CNN3d(in_channels)
    if modality == "ecg":
        from monai.networks.nets import resnet18

        net = resnet18(spatial_dims=1, n_input_channels=in_channels, num_classes=1)
        net.dim = net.fc.in_features
        net.fc = nn.Identity()
        return net
    import timm

    extra = {} if output_stride == 32 else {"output_stride": output_stride}
    net = timm.create_model(arch, pretrained=False, in_chans=in_channels, num_classes=0, **extra)
    net.dim = net.num_features
    return net


def centre(x: torch.Tensor, modality: str, ecg_window: int = 250) -> torch.Tensor:
    """The evaluation view: the image itself, or the centre window of an ECG."""
    if modality != "ecg":
        return x
    start = (x.shape[-1] - ecg_window) // 2
    return x[..., start:start + ecg_window]


def augment(x: torch.Tensor, modality: str, g: torch.Generator, ecg_window: int = 250) -> torch.Tensor:
    """One random view of each sample of a batch (per-sample parameters): the nuisances of the modality."""
    b = x.shape[0]

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return torch.rand(b, *shape, generator=g) * (hi - lo) + lo

    if modality in VOLUMES:  # small in-plane rotation and scale, shift, intensity shift (and gain: MRI), noise
        rot, scale = u(-0.1, 0.1), u(0.9, 1.1)
        cos, sin, zero, one = torch.cos(rot) / scale, torch.sin(rot) / scale, torch.zeros(b), torch.ones(b)
        shift = u(-2, 2, 3) * 2 / torch.tensor(x.shape[2:][::-1], dtype=torch.float32)  # ±2 voxels (x, y, z)
        theta = torch.stack([torch.stack([cos, -sin, zero, shift[:, 0]], 1), torch.stack([sin, cos, zero, shift[:, 1]], 1),
                             torch.stack([zero, zero, one, shift[:, 2]], 1)], 1)
        v = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False,
                          padding_mode="border")
        if modality == "ct":  # Hounsfield units are calibrated: only a site's few-HU offset (±5 HU of the window)
            v = v + u(-0.0125, 0.0125, 1, 1, 1, 1)
        else:  # MRI intensities are in arbitrary scanner units
            v = v * u(0.9, 1.1, 1, 1, 1, 1) + u(-0.1, 0.1, 1, 1, 1, 1)
        return v + 0.02 * torch.randn(v.shape, generator=g)
    if modality == "ecg":
        start = torch.randint(0, x.shape[-1] - ecg_window + 1, (b,), generator=g)
        v = torch.stack([x[i, :, s:s + ecg_window] for i, s in enumerate(start.tolist())])
        t = torch.arange(ecg_window) / 100.0
        wander = 0.1 * torch.sin(2 * math.pi * u(0.05, 0.5, 1, 1) * t + u(0, 6.3, 1, 1))
        v = v * u(0.8, 1.2, 1, 1) + wander + 0.05 * torch.randn(v.shape, generator=g)
        return v * (torch.rand(b, v.shape[1], 1, generator=g) > 0.1)  # lead dropout
    # geometry: rotation, flips, shift (affine grid, one matrix per sample)
    rot = {"oct": u(-0.26, 0.26), "fundus": u(-math.pi, math.pi), "histo": (torch.randint(0, 4, (b,), generator=g)
                                                                           * math.pi / 2)}[modality]
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    shift_y = u(-0.4, 0.4) if modality == "oct" else torch.zeros(b)
    cos, sin = torch.cos(rot), torch.sin(rot)
    theta = torch.stack([torch.stack([cos * flip, -sin, torch.zeros(b)], 1),
                         torch.stack([sin * flip, cos, shift_y], 1)], 1)
    v = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False,
                      padding_mode="border" if modality == "oct" else "zeros")
    if modality == "histo" or modality == "fundus":  # flip the other axis too, colour jitter
        v = torch.where((torch.rand(b, 1, 1, 1, generator=g) < 0.5), v.flip(-2), v)
        grey = v.mean(1, keepdim=True)
        v = grey + (v - grey) * u(0.8, 1.2, 1, 1, 1)  # saturation
        v = (v - v.mean((1, 2, 3), keepdim=True)) * u(0.8, 1.2, 1, 1, 1) + v.mean((1, 2, 3), keepdim=True)
        v = v * u(0.8, 1.2, 1, 1, 1)  # contrast, brightness
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, x.shape[-2]), torch.linspace(-1, 1, x.shape[-1]), indexing="ij")
    v = v * torch.exp(u(-0.3, 0.3, 1, 1, 1) * xx + u(-0.3, 0.3, 1, 1, 1) * yy)  # illumination gradient
    if modality == "oct":  # gain, offset, speckle
        v = v * u(0.65, 1.35, 1, 1, 1) + u(-0.08, 0.08, 1, 1, 1)
        v = v * torch.distributions.Gamma(25.0, 25.0).sample(v.shape)
    if modality == "fundus":
        v = v * (xx ** 2 + yy ** 2 <= 1)  # the circular field of view
    return v.clamp(0, 1.5)


def macro_auroc(y: np.ndarray, scores: np.ndarray) -> float:
    """Macro one-vs-rest AUROC (multi-class) or mean per-label AUROC (multi-label), as scikit-learn computes."""
    from sklearn.metrics import roc_auc_score

    if y.ndim == 2:
        keep = [k for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)]
        return float(np.mean([roc_auc_score(y[:, k], scores[:, k]) for k in keep]))
    if scores.shape[1] == 2:
        return float(roc_auc_score(y, scores[:, 1]))
    return float(roc_auc_score(y, scores, multi_class="ovr", average="macro", labels=list(range(scores.shape[1]))))


def linear_probe(f_train: np.ndarray, y_train: np.ndarray, groups: np.ndarray, f_test: np.ndarray,
                 y_test: np.ndarray) -> float:
    """Standardised features, L2 logistic regression with C chosen (log-loss) by patient-grouped 5-fold CV,
    the usual linear evaluation (Kolesnikov et al. 2019); test AUROC."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(f_train)
    a, b = scaler.transform(f_train), scaler.transform(f_test)
    folds = min(5, len(np.unique(groups)))

    def fit(y: np.ndarray) -> np.ndarray:
        cv = list(GroupKFold(folds).split(a, y, groups))
        m = LogisticRegressionCV(Cs=np.logspace(-4, 2, 7), cv=cv, l1_ratios=(0.0,), scoring="neg_log_loss",
                                 max_iter=1000, use_legacy_attributes=False).fit(a, y)
        return m.predict_proba(b)

    if y_train.ndim == 2:
        return macro_auroc(y_test, np.stack([fit(y_train[:, k])[:, 1] for k in range(y_train.shape[1])], 1))
    return macro_auroc(y_test, fit(y_train))
