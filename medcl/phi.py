"""Protected health information (PHI) and secrets: pseudonymisation, the guard and redaction.

* Patient identifiers are replaced by a keyed hash (HMAC-SHA256) as soon as a manifest is
  read. The key comes from ``MEDCL_PSEUDONYM_KEY`` or the file named by
  ``MEDCL_PSEUDONYM_KEY_FILE`` (keep it outside the run directory); it is never logged.
  Without either, a fixed development key is used and a warning says so: the hashes are
  then stable but guessable by anyone with medcl, so set a key for real data.
* Every PHI value a reader or the manifest sees (patient IDs, DICOM patient tags, path
  components) is remembered in :data:`REGISTRY`; the tracker refuses to log any value
  that contains one (:func:`check_value`), and the log filter replaces them (:func:`redact`).
  Values are matched case-insensitively as whole tokens (not inside a longer word or number),
  so a numeric MRN never trips over the digits of a float. Components of DICOM person names
  ("SMITH", "JOHN") are redacted from logs but do not stop a run: given names are often plain
  words ("Mark", "Hope").
* Secrets — the pseudonymisation key, tracking passwords and tokens (:data:`SECRET_ENV_VARS`),
  passwords inside URIs (``http://user:password@host``) — are refused by the guard and replaced
  in logs, error lines and the resolved config (:func:`scrub_secrets`).
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
from typing import Any

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
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs", "OtherPatientNames",
    "PatientBirthName", "PatientMotherBirthName", "AccessionNumber", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "ReferringPhysicianName", "ReferringPhysicianAddress", "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord", "RequestingPhysician", "OperatorsName", "StudyID",
    "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator", "IssuerOfPatientID", "StationName",
    "DeviceSerialNumber", "AdmissionID",
)

#: DICOM person-name (PN) keywords: their components are also redacted from logs.
DICOM_PERSON_NAME_TAGS: frozenset[str] = frozenset(
    {"PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "ReferringPhysicianName",
     "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord", "RequestingPhysician",
     "OperatorsName"}
)

#: environment variables whose values are secrets: never logged, tracked or written to a config
SECRET_ENV_VARS: tuple[str, ...] = (
    "MEDCL_PSEUDONYM_KEY", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_AUTH",
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CLIENT_SECRET", "DATABRICKS_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MINIO_SECRET_KEY",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
)
#: secrets shorter than this are not matched (a short password like "mlflow" would match ordinary text)
MIN_SECRET_LEN = 8
#: ``scheme://user:password@host`` — the password part
_URI_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)(?P<pw>[^/\s@]+)(?=@)")


_key_cache: dict[tuple[str, int, int], bytes] = {}


def _key_from_file(path: str) -> bytes:
    """The stripped content of the key file (cached per path, size and modification time)."""
    p = Path(path)
    try:
        st = p.stat()
        cache_key = (str(p), st.st_mtime_ns, st.st_size)
        if cache_key not in _key_cache:
            _key_cache.clear()
            _key_cache[cache_key] = p.read_bytes().strip()
        key = _key_cache[cache_key]
    except OSError:
        raise PHIError(
            f"the pseudonymisation key file {path!r} does not exist or cannot be read",
            where="MEDCL_PSEUDONYM_KEY_FILE",
            fix="point it at a readable file holding the secret key, kept outside the run directory",
        ) from None
    if not key:
        raise PHIError("the pseudonymisation key file is empty", where="MEDCL_PSEUDONYM_KEY_FILE",
                       fix="write the secret key (a long random string) into the file")
    return key


def _key() -> bytes:
    global _warned
    env = os.environ.get("MEDCL_PSEUDONYM_KEY")
    if env:
        return env.encode()
    path = os.environ.get("MEDCL_PSEUDONYM_KEY_FILE")
    if path:
        return _key_from_file(path)
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

#: a token of a file/folder name that looks like an identifier (an MRN, accession number, date)
_ID_TOKEN = re.compile(r"^(?=(?:[^0-9]*[0-9]){5})[A-Za-z0-9]{6,}$")


def _pattern_for(value: str) -> str:
    """Regex matching ``value`` as a whole token: not inside a longer word, nor inside a number."""
    esc = re.escape(value)
    if value.isdigit():  # a numeric id must not match the digits of 0.1234567 or 1234567.5
        return rf"(?<![A-Za-z0-9.]){esc}(?![A-Za-z0-9]|\.[0-9])"
    return rf"(?<![A-Za-z0-9]){esc}(?![A-Za-z0-9])"


class PHIRegistry:
    """Thread-safe set of clear-text PHI strings seen while reading data.

    Two tiers: *strict* values (identifiers, whole names, path components) make the tracker
    refuse a value and are redacted from logs; *soft* values (components of person names) are
    only redacted from logs.
    """

    #: values shorter than this are not tracked (e.g. "M", "1"): they would block every log.
    MIN_LEN = 4

    def __init__(self) -> None:
        """Start empty, with only :data:`SAFE_WORDS` allowed."""
        self._values: set[str] = set()
        self._parts: set[str] = set()
        self._soft: set[str] = set()
        self._allowed: set[str] = set(SAFE_WORDS)
        self._lock = threading.Lock()
        self._strict_re: re.Pattern[str] | None = None
        self._all_re: re.Pattern[str] | None = None

    def _changed(self) -> None:
        self._strict_re = self._all_re = None

    def allow(self, words: Iterable[object]) -> None:
        """Words that are never treated as PHI path parts or name components (class names, ...)."""
        with self._lock:
            self._allowed.update(str(w).strip().lower() for w in words if str(w).strip())
            self._parts = {p for p in self._parts if p.lower() not in self._allowed}
            self._soft = {p for p in self._soft if p.lower() not in self._allowed}
            self._changed()

    def add_path_part(self, value: object) -> None:
        """A folder/file name: skipped if it is a safe word; identifier-like tokens in it are added too."""
        text = str(value).strip()
        if len(text) < self.MIN_LEN or text.lower() in self._allowed or text.isdigit() and len(text) < 5:
            return
        tokens = [t for t in re.split(r"[\s_\-.^,;=+]+", text) if t != text and _ID_TOKEN.match(t)]
        with self._lock:
            for t in (text, *tokens):
                if t not in self._parts and t not in self._values:
                    self._parts.add(t)
                    self._changed()

    def add(self, value: object) -> None:
        """An identifier (patient id, DICOM PHI value): refused by the tracker, redacted from logs."""
        text = str(value).strip()
        if len(text) < self.MIN_LEN:
            return
        with self._lock:
            if text not in self._values:
                self._values.add(text)
                self._changed()

    def add_soft(self, value: object) -> None:
        """A name component: redacted from logs only (skipped if short or a safe word)."""
        text = str(value).strip()
        if len(text) < self.MIN_LEN or text.lower() in self._allowed:
            return
        with self._lock:
            if text not in self._soft:
                self._soft.add(text)
                self._changed()

    def update(self, values: Iterable[object]) -> None:
        """:meth:`add` each of ``values``."""
        for v in values:
            self.add(v)

    def clear(self) -> None:
        """Forget every registered value and every allowed word except :data:`SAFE_WORDS`."""
        with self._lock:
            self._values.clear()
            self._parts.clear()
            self._soft.clear()
            self._allowed = set(SAFE_WORDS)
            self._changed()

    def __len__(self) -> int:
        """Number of registered values, strict and soft."""
        return len(self._values) + len(self._parts) + len(self._soft)

    def _compile(self, values: Iterable[str]) -> re.Pattern[str] | None:
        alts = [_pattern_for(v) for v in sorted(set(values), key=len, reverse=True)]
        return re.compile("|".join(alts), re.IGNORECASE) if alts else None

    def find(self, text: str, *, soft: bool = False) -> str | None:
        """The first registered PHI value in ``text`` (case-insensitive, whole tokens), if any.

        Args:
            text: what is about to be written.
            soft: also look for person-name components (log redaction).
        """
        with self._lock:
            if soft:
                if self._all_re is None:
                    self._all_re = self._compile(self._values | self._parts | self._soft) or re.compile(r"(?!x)x")
                pattern = self._all_re
            else:
                if self._strict_re is None:
                    self._strict_re = self._compile(self._values | self._parts) or re.compile(r"(?!x)x")
                pattern = self._strict_re
        m = pattern.search(text)
        return m.group(0) if m else None


REGISTRY = PHIRegistry()


def register_dicom_phi(ds) -> None:
    """Register the PHI values of a pydicom Dataset (person names also by component).

    Raises:
        PHIError: a PHI element that is present but cannot be decoded (a malformed value or character set): its
            value could not be registered, so the guard could not stop it — the file is refused instead.
    """
    for kw in DICOM_PHI_TAGS:
        try:
            val = ds.get(kw, None)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on a malformed value
            raise PHIError(f"the DICOM element {kw} (patient information) cannot be decoded "
                           f"({type(exc).__name__}): its value cannot be registered with the PHI guard",
                           where=f"DICOM element {kw}",
                           fix="re-export the file from PACS (or anonymise it with a DICOM tool) so that the element "
                           "is well-formed; medcl refuses a file whose patient information it cannot read") from None
        if val is None or val == "":
            continue
        values = list(val) if isinstance(val, (list, tuple)) or type(val).__name__ == "MultiValue" else [val]
        for v in values:
            text = str(v)
            REGISTRY.add(text)
            if kw in DICOM_PERSON_NAME_TAGS:
                for part in re.split(r"[\^=\s,]+", text):
                    REGISTRY.add_soft(part)


def register_path_parts(path: str | os.PathLike, root: str | os.PathLike | None = None) -> None:
    """Register folder and file names under ``root`` (they often carry MRNs or names)."""
    p = Path(path)
    try:
        rel = p.relative_to(root) if root is not None else p
    except ValueError:
        rel = p
    for part in rel.parts:
        name = part[: -len(".nii.gz")] if part.lower().endswith(".nii.gz") else part
        REGISTRY.add_path_part(Path(name).stem if "." in name else name)


# ----------------------------------------------------------------------------------------- secrets
_extra_secrets: set[str] = set()


def register_secret(value: object) -> None:
    """A secret that is not in an environment variable (e.g. a password read from a file)."""
    text = str(value).strip()
    if len(text) >= MIN_SECRET_LEN:
        _extra_secrets.add(text)


def secret_values() -> list[str]:
    """Current secrets: :data:`SECRET_ENV_VARS` values, the key file's key and registered ones, longest first."""
    found = set(_extra_secrets)
    for name in SECRET_ENV_VARS:
        v = os.environ.get(name, "").strip()
        if len(v) >= MIN_SECRET_LEN:
            found.add(v)
    key_file = os.environ.get("MEDCL_PSEUDONYM_KEY_FILE")
    if key_file:
        try:
            k = _key_from_file(key_file).decode("utf-8", "replace")
        except PHIError:
            k = ""
        if len(k) >= MIN_SECRET_LEN:
            found.add(k)
    return sorted(found, key=len, reverse=True)


def scrub_secrets(value: Any, replacement: str = "***") -> Any:
    """``value`` with passwords in URIs and known secrets replaced, recursively through dicts/lists."""
    if isinstance(value, dict):
        return {k: scrub_secrets(v, replacement) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub_secrets(v, replacement) for v in value)
    if not isinstance(value, str):
        return value
    text = _URI_PASSWORD.sub(lambda m: m.group("head") + replacement, value)
    for s in secret_values():
        if s in text:
            text = text.replace(s, replacement)
    return text


def _has_secret(text: str) -> bool:
    return bool(_URI_PASSWORD.search(text)) or any(s in text for s in secret_values())


# ----------------------------------------------------------------------------------------- guard
def check_value(value: object, *, where: str = "") -> None:
    """Raise :class:`PHIError` if ``value`` contains registered PHI or a secret (never echoes it)."""
    text = str(value)
    if REGISTRY.find(text) is not None:
        raise PHIError(
            "refusing to write a value that contains protected health information",
            where=where or "tracking",
            fix="log pseudonymised identifiers or counts instead; medcl never writes patient identifiers",
        )
    if _has_secret(text):
        raise PHIError(
            "refusing to write a value that contains a secret (a password, token or the pseudonymisation key)",
            where=where or "tracking",
            fix="keep credentials in environment variables (MLFLOW_TRACKING_USERNAME/PASSWORD), never in the config",
        )


def redact(text: str, replacement: str = "[PHI]") -> str:
    """Replace every registered PHI value (name components included) and every secret in ``text``."""
    text = scrub_secrets(text, "[secret]")
    for _ in range(10_000):  # each pass removes one distinct value
        hit = REGISTRY.find(text, soft=True)
        if hit is None:
            break
        text = re.sub(_pattern_for(hit), replacement, text, flags=re.IGNORECASE)
    return text
