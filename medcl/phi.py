"""Protected health information (PHI): pseudonymisation and the guard.

* Patient identifiers are replaced by a keyed hash (HMAC-SHA256) as soon as a manifest is
  read. The key comes from ``MEDCL_PSEUDONYM_KEY`` or the file named by
  ``MEDCL_PSEUDONYM_KEY_FILE`` (keep it outside the run directory); it is never logged.
  Without either, a fixed development key is used and a warning says so: the hashes are
  then stable but guessable by anyone with medcl, so set a key for real data.
* Every PHI value a reader or the manifest sees (patient IDs, DICOM patient tags, path
  components) is remembered in :data:`REGISTRY`; the tracker refuses to log any value
  that contains one (:func:`check_value`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

from medcl.errors import PHIError

log = logging.getLogger(__name__)

_DEV_KEY = b"medcl-development-key-not-secret"
_warned = False

#: DICOM tags (keywords) that are allowed into medcl's metadata. Everything else is dropped.
DICOM_ALLOWED_TAGS: frozenset[str] = frozenset(
    {
        "Modality", "Manufacturer", "ManufacturerModelName", "BodyPartExamined",
        "PhotometricInterpretation", "Rows", "Columns", "NumberOfFrames", "BitsAllocated",
        "BitsStored", "PixelRepresentation", "SamplesPerPixel", "RescaleSlope", "RescaleIntercept",
        "RescaleType", "PixelSpacing", "SliceThickness", "SpacingBetweenSlices",
        "ImageOrientationPatient", "ImagePositionPatient", "WindowCenter", "WindowWidth",
        "KVP", "ConvolutionKernel", "MagneticFieldStrength", "RepetitionTime", "EchoTime",
        "SeriesDescription", "TransferSyntaxUID", "SOPClassUID",
    }
)

#: DICOM keywords whose values are PHI: registered with the guard whenever a file is read.
DICOM_PHI_TAGS: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames",
    "AccessionNumber", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "StudyID", "PatientAddress",
    "PatientTelephoneNumbers", "MedicalRecordLocator", "IssuerOfPatientID",
)


def _key() -> bytes:
    global _warned
    env = os.environ.get("MEDCL_PSEUDONYM_KEY")
    if env:
        return env.encode()
    path = os.environ.get("MEDCL_PSEUDONYM_KEY_FILE")
    if path:
        p = Path(path)
        if not p.is_file():
            raise PHIError(
                f"pseudonymisation key file {path!r} does not exist",
                where="MEDCL_PSEUDONYM_KEY_FILE",
                fix="point it at a readable file holding the secret key, kept outside the run directory",
            )
        return p.read_bytes().strip()
    if not _warned:
        log.warning(
            "no MEDCL_PSEUDONYM_KEY set: patient IDs are hashed with the public development key; "
            "set MEDCL_PSEUDONYM_KEY (or MEDCL_PSEUDONYM_KEY_FILE) for real patient data"
        )
        _warned = True
    return _DEV_KEY


def pseudonymize(value: object, prefix: str = "p") -> str:
    """Keyed hash of an identifier: ``"p-" + 16 hex chars``; also registers the clear value."""
    text = str(value).strip()
    REGISTRY.add(text)
    digest = hmac.new(_key(), text.encode("utf-8"), hashlib.sha256).hexdigest()[:16]
    return f"{prefix}-{digest}"


#: folder/file names that are structure, not identifiers (never registered as PHI path parts)
SAFE_WORDS: frozenset[str] = frozenset(
    {
        "data", "dataset", "datasets", "train", "training", "val", "valid", "validation", "test", "testing",
        "images", "image", "imgs", "masks", "mask", "labels", "label", "seg", "segmentation", "series", "dicom",
        "nifti", "slides", "slide", "tiles", "tile", "records", "record", "signals", "scans", "scan", "volumes",
        "volume", "raw", "processed", "export", "exports", "studies", "study", "patients", "cases", "case",
        "ct", "mri", "histo", "oct", "fundus", "ecg", "wfdb", "png", "jpeg", "tiff", "manifest", "demo",
        "medcl-demo-data", "normal", "abnormal", "lesion", "lesions",
    }
)


class PHIRegistry:
    """Thread-safe set of clear-text PHI strings seen while reading data."""

    #: values shorter than this are not tracked (e.g. "M", "1"): they would block every log.
    MIN_LEN = 4

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._parts: set[str] = set()
        self._allowed: set[str] = set(SAFE_WORDS)
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    def allow(self, words: Iterable[object]) -> None:
        """Words that are never treated as PHI path parts (class names, modality names, ...)."""
        with self._lock:
            self._allowed.update(str(w).strip().lower() for w in words if str(w).strip())
            self._parts = {p for p in self._parts if p.lower() not in self._allowed}
            self._pattern = None

    def add_path_part(self, value: object) -> None:
        """A folder/file name: matched only as a whole token, and skipped if it is a safe word."""
        text = str(value).strip()
        if len(text) < self.MIN_LEN or text.lower() in self._allowed or text.isdigit() and len(text) < 5:
            return
        with self._lock:
            if text not in self._parts and text not in self._values:
                self._parts.add(text)
                self._pattern = None

    def add(self, value: object) -> None:
        text = str(value).strip()
        if len(text) < self.MIN_LEN:
            return
        with self._lock:
            if text not in self._values:
                self._values.add(text)
                self._pattern = None

    def update(self, values: Iterable[object]) -> None:
        for v in values:
            self.add(v)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._parts.clear()
            self._allowed = set(SAFE_WORDS)
            self._pattern = None

    def __len__(self) -> int:
        return len(self._values) + len(self._parts)

    def find(self, text: str) -> str | None:
        """Return the first registered PHI value contained in ``text`` (case-insensitive), if any."""
        with self._lock:
            if not self._values and not self._parts:
                return None
            if self._pattern is None:
                alts = [re.escape(a) for a in sorted(self._values, key=len, reverse=True)]
                alts += [rf"(?<![A-Za-z0-9]){re.escape(a)}(?![A-Za-z0-9])"
                         for a in sorted(self._parts, key=len, reverse=True)]
                self._pattern = re.compile("|".join(alts), re.IGNORECASE)
            m = self._pattern.search(text)
        return m.group(0) if m else None


REGISTRY = PHIRegistry()


def register_dicom_phi(ds) -> None:
    """Register the PHI values of a pydicom Dataset (names also split into their parts)."""
    for kw in DICOM_PHI_TAGS:
        val = ds.get(kw, None)
        if val is None or val == "":
            continue
        text = str(val)
        REGISTRY.add(text)
        for part in re.split(r"[\^\s,]+", text):
            REGISTRY.add(part)


def register_path_parts(path: str | os.PathLike, root: str | os.PathLike | None = None) -> None:
    """Register folder and file names under ``root`` (they often carry MRNs or names)."""
    p = Path(path)
    try:
        rel = p.relative_to(root) if root is not None else p
    except ValueError:
        rel = p
    for part in rel.parts:
        REGISTRY.add_path_part(Path(part).stem)


def check_value(value: object, *, where: str = "") -> None:
    """Raise :class:`PHIError` if ``value`` contains registered PHI (never echoes the value)."""
    hit = REGISTRY.find(str(value))
    if hit is not None:
        raise PHIError(
            "refusing to write a value that contains protected health information",
            where=where or "tracking",
            fix="log pseudonymised identifiers or counts instead; medcl never writes patient identifiers",
        )


def redact(text: str, replacement: str = "[PHI]") -> str:
    """Replace every registered PHI value in ``text``."""
    while True:
        hit = REGISTRY.find(text)
        if hit is None:
            return text
        text = re.sub(re.escape(hit), replacement, text, flags=re.IGNORECASE)
