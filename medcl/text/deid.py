"""Rule-based de-identification of free-text reports: what may reach a tokenizer, MLflow or the report.

A clinical report next to a scan names the patient, the reporting physician, dates, record numbers and phone
numbers. :func:`scrub` replaces each with a category tag before the text is used for anything:

* ``[NAME]`` — a name after a title (``Dr``, ``Mr``, ``Mrs``, ``Ms``, ``Miss``, ``Prof``) or after a label
  (``Patient:``, ``Name:``, ``Pt:``, ``signed by``, ``reported by``, ``referred by``, ``seen by``, ``attending:``,
  ``physician:``, ``cc:``): up to three capitalised words (initials and hyphenated names included);
  and every name component the PHI registry holds (DICOM patient and physician names).
* ``[DATE]`` — ISO (``2024-03-05``), numeric with a year (``05/03/2024``, ``5.3.24``, ``05-03-2024``), and with a
  month name (``3 March 2024``, ``March 3, 2024``, ``03-Mar-2024``, ``Mar 2024``).
* ``[ID]`` — a labelled record number (``MRN``, ``medical record``, ``NHS``, ``accession``, ``ID``, ``hospital
  no``), any run of 6 or more digits that is not part of a decimal number, and the NHS layout ``123 456 7890``; every identifier the caller passes (the manifest's patient ids) and the PHI registry's strict values.
* ``[PHONE]`` — international (``+44 20 7946 0958``) and national (``(555) 123-4567``, ``555-123-4567``,
  ``0161 496 0000``) numbers.
* ``[EMAIL]`` — e-mail addresses.

Clinical numbers survive (``QT 420 ms``, ``HR 72``, ``1.5 mm``, ``grade 2``, lead names, ``V1``-``V6``). A name a rule
found in one report is replaced wherever it stands in the others (:func:`register_found_names`, run over a whole
manifest first). What no rule sees is not caught: a bare name found after no title or label in any report and not
registered ("Smith reported pain"), free-text addresses, ages. Register the names you know (:func:`medcl.phi.register_dicom_phi` does it for DICOM) and keep the
scrubbed text the only text that leaves the manifest.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from medcl.phi import REGISTRY, _pattern_for

#: replacement tags, one per category
TAGS = ("[NAME]", "[DATE]", "[ID]", "[PHONE]", "[EMAIL]")

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
_UP, _LOW = "A-ZÀ-ÖØ-Þ", "a-zß-öø-ÿ"
#: a capitalised word (hyphenated, with apostrophes, accented letters) or an initial (``J.`` or ``J`` before a space)
_NAME_WORD = rf"(?:[{_UP}][{_LOW}'’]+(?:-[{_UP}][{_LOW}'’]+)?|[{_UP}]\.|[{_UP}](?=\s))"
_TITLE = r"(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof|Professor|Doctor)\.?"
_NAME = rf"(?!{_TITLE}\s){_NAME_WORD}(?:\s+{_NAME_WORD}){{0,2}}"
#: what labels a record number (the label is kept, the number replaced)
_ID_LABEL = (r"MRN|medical\s+record(?:\s+(?:number|no\.?))?|NHS(?:\s+(?:number|no\.?))?|accession(?:\s+(?:number|no\.?))?|"
             r"hospital\s+(?:number|no\.?)|patient\s+ID|ID")
_LABEL = (r"(?:patient(?:\s+name)?|name|pt|signed\s+by|reported\s+by|referred\s+by|seen\s+by|dictated\s+by|"
          r"attending|physician|consultant|cc)\s*[:\-]?")

_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("[EMAIL]", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    # dates before numbers: 2024-03-05 would otherwise look like digits
    ("[DATE]", re.compile(r"\b\d{4}-\d{1,2}-\d{1,2}\b")),
    ("[DATE]", re.compile(r"(?<!\d)(?<!\d\.)\d{1,2}[/.\-]\d{1,2}[/.\-](?:\d{4}|\d{2})(?!\d|\.\d)")),
    ("[DATE]", re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?[\s\-]+{_MONTH}[\s\-,]+\d{{2,4}}\b", re.IGNORECASE)),
    ("[DATE]", re.compile(rf"\b{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b", re.IGNORECASE)),
    ("[DATE]", re.compile(rf"\b{_MONTH}\s+\d{{4}}\b", re.IGNORECASE)),
    ("[PHONE]", re.compile(r"(?<![\w+])\+\d{1,3}[\s.\-]?(?:\(\d+\)[\s.\-]?)?\d{2,4}(?:[\s.\-]?\d{2,4}){1,4}\b")),
    ("[PHONE]", re.compile(r"(?<!\w)\(\d{3,5}\)\s?\d{3,4}[\s.\-]?\d{3,4}\b")),
    ("[PHONE]", re.compile(r"(?<![\w.])\d{3}[.\-]\d{3}[.\-]\d{4}(?!\w|\.\d)")),
    ("[PHONE]", re.compile(r"(?<![\w.])0\d{3,4}\s\d{3}\s?\d{3,4}(?!\w|\.\d)")),
    ("[ID]", re.compile(rf"(?P<keep>\b(?:{_ID_LABEL})\s*(?:#|:|no\.?)?\s*)[A-Z]{{0,3}}\d[\d\s\-]{{2,}}\d\b",
                        re.IGNORECASE)),
    ("[ID]", re.compile(r"(?<![\d.,])\d{6,}(?![\d]|[.,]\d)")),
    ("[ID]", re.compile(r"(?<![\d.,])\d{3}[\s\-]\d{3}[\s\-]\d{4}(?![\d]|[.,]\d)")),  # NHS number layout
    ("[NAME]", re.compile(rf"(?P<keep>\b{_TITLE}\s+){_NAME}")),
    ("[NAME]", re.compile(rf"(?P<keep>(?i:\b{_LABEL})\s*){_NAME}")),
]


#: several ``[NAME]`` tags in a row (a name replaced component by component)
_NAME_RUN = re.compile(r"\[NAME\](?:[ \t]+\[NAME\])+")


@dataclass
class Scrubbed:
    """De-identified text and how many spans of each category were replaced."""

    text: str
    counts: Counter = field(default_factory=Counter)


def _replace(match: re.Match[str], tag: str) -> str:
    """The span's tag; a labelled span (``MRN: 123``, ``Dr. Smith``, ``Patient: John``) keeps its label."""
    return (match.group("keep") if "keep" in match.re.groupindex else "") + tag


def register_found_names(texts: Iterable[str]) -> int:
    """Register every name word a ``[NAME]`` rule finds in ``texts`` with the PHI registry (as a name component).

    :func:`scrub` then also replaces that name where it stands bare, in every text (``"Patient: Ottoline
    Fairweather"`` in one report, ``"about Ottoline Fairweather"`` in another), and log lines are redacted of it.
    Initials and words shorter than the registry's minimum are left out.

    Returns:
        How many distinct words were found.
    """
    words: set[str] = set()
    rules = [p for tag, p in _RULES if tag == "[NAME]"]
    for text in texts:
        for pattern in rules:
            for m in pattern.finditer(str(text)):
                span = m.group(0)[len(m.group("keep")):] if "keep" in pattern.groupindex else m.group(0)
                words.update(w for w in re.split(r"\s+", span) if len(w) >= REGISTRY.MIN_LEN and not w.endswith("."))
    for w in words:
        REGISTRY.add_soft(w)
    return len(words)


def scrub(text: str, identifiers: Iterable[str] = (), *, registry: bool = True) -> Scrubbed:
    """Replace names, dates, record numbers, phone numbers, e-mails and the given identifiers in ``text``.

    Args:
        text: a free-text report.
        identifiers: values that identify a patient here (the manifest's patient ids, accession numbers): each is
            replaced by ``[ID]`` wherever it appears as a whole token, case-insensitively.
        registry: also replace what :data:`medcl.phi.REGISTRY` holds (DICOM names and ids seen while reading).

    Returns:
        The scrubbed text and the number of replacements per tag.
    """
    counts: Counter = Counter()
    out = str(text)
    ids = sorted({str(i).strip() for i in identifiers if len(str(i).strip()) >= 3}, key=len, reverse=True)
    for value in ids:
        out, n = re.subn(_pattern_for(value), "[ID]", out, flags=re.IGNORECASE)
        counts["[ID]"] += n
    if registry:
        for _ in range(1000):  # one distinct registered value per pass
            hit = REGISTRY.find(out, soft=True)
            if hit is None:
                break
            out, n = re.subn(_pattern_for(hit), "[NAME]" if hit.isalpha() else "[ID]", out, flags=re.IGNORECASE)
            counts["[NAME]" if hit.isalpha() else "[ID]"] += n
    for tag, pattern in _RULES:
        out, n = pattern.subn(lambda m, tag=tag: _replace(m, tag), out)
        counts[tag] += n
    # a name replaced word by word (registered components) is one name: "[NAME] [NAME]" -> "[NAME]"
    merged = [m.count("[NAME]") - 1 for m in _NAME_RUN.findall(out)]
    out = _NAME_RUN.sub("[NAME]", out)
    counts["[NAME]"] -= sum(merged)
    return Scrubbed(out, +counts)
