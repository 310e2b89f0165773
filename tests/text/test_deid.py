"""De-identification of reports: planted PHI of every category is gone, clinical content stays.

Each case is a sentence written by hand with the PHI it plants and the clinical words it must keep; the
expectation is the text itself (the planted strings absent, the kept strings present), not the scrubber's output.
"""

from __future__ import annotations

import pytest

from medcl.phi import REGISTRY
from medcl.text.deid import scrub

CASES = [
    # (report, planted PHI that must disappear, clinical text that must survive, tags expected)
    ("Patient: John A. Smith, seen 2024-03-05. Drusen in the left eye, grade 2.",
     ["John", "Smith", "2024-03-05"], ["Drusen in the left eye, grade 2"], {"[NAME]", "[DATE]"}),
    ("Reported by Dr. Maria O'Neill-Baptiste on 5 March 2024: sinus rhythm, HR 72 bpm, QT 420 ms.",
     ["Maria", "O'Neill-Baptiste", "5 March 2024"], ["sinus rhythm, HR 72 bpm, QT 420 ms"], {"[NAME]", "[DATE]"}),
    ("MRN: 00123456. DOB 03/07/1961. Microaneurysms and dot haemorrhages; moderate NPDR.",
     ["00123456", "03/07/1961"], ["Microaneurysms and dot haemorrhages; moderate NPDR"], {"[ID]", "[DATE]"}),
    ("Call the ward on +44 20 7946 0958 or (555) 123-4567; e-mail j.smith@hospital.org. ST elevation V1-V4.",
     ["7946 0958", "123-4567", "j.smith@hospital.org"], ["ST elevation V1-V4"], {"[PHONE]", "[EMAIL]"}),
    ("NHS number 943 476 5919, accession A12345678, scan of March 3, 2023: lesion 1.5 mm, 0.123456 SUV.",
     ["943 476 5919", "A12345678", "March 3, 2023"], ["lesion 1.5 mm", "0.123456 SUV"], {"[ID]", "[DATE]"}),
    ("cc: Prof. Ahmed Khan. Mrs Lee tolerated the exam. 12.04.22 follow-up: no change in the 3 drusen.",
     ["Ahmed", "Khan", "Lee", "12.04.22"], ["tolerated the exam", "no change in the 3 drusen"],
     {"[NAME]", "[DATE]"}),
    ("Signed by: Jane Doe MD 3/4/2021. Name: Anna-Lena Müller. Patient ID: 12345, HbA1c 7.2%, BP 120/80.",
     ["Jane", "Doe", "3/4/2021", "Anna-Lena", "Müller", "12345"], ["MD", "Patient ID:", "HbA1c 7.2%, BP 120/80"],
     {"[NAME]", "[DATE]", "[ID]"}),
]


@pytest.mark.parametrize("report, planted, kept, tags", CASES)
def test_planted_phi_is_replaced_and_clinical_text_kept(report, planted, kept, tags):
    out = scrub(report, registry=False)
    for p in planted:
        assert p not in out.text, f"{p!r} survived: {out.text}"
    for k in kept:
        assert k in out.text, f"{k!r} lost: {out.text}"
    assert tags <= set(out.counts)


def test_identifiers_given_and_registered_are_replaced_as_whole_tokens():
    REGISTRY.clear()
    try:
        REGISTRY.add_soft("Okonkwo")  # a DICOM patient-name component seen while reading the images
        out = scrub("pt-0042 (Okonkwo) has pt-00421's report attached; okonkwo agreed.", ["pt-0042"])
        assert "Okonkwo" not in out.text and "okonkwo" not in out.text
        assert out.text.startswith("[ID] ([NAME])") and "pt-00421" in out.text  # a longer id is another token
        assert out.counts["[ID]"] == 1 and out.counts["[NAME]"] == 2
    finally:
        REGISTRY.clear()


def test_text_without_phi_is_unchanged():
    text = ("Sinus rhythm at 64 bpm. PR 160 ms, QRS 98 ms, QTc 412 ms. Lead II, aVF and V5 normal. "
            "Intermediate AMD: 4 large drusen, no geographic atrophy. Grade 2/4.")
    out = scrub(text, registry=False)
    assert out.text == text and not out.counts


def test_a_name_found_in_one_report_is_replaced_where_it_stands_bare_in_another():
    from medcl.text.deid import register_found_names

    reports = ["Patient: Ottoline Fairweather, MRN 8831902. Normal scan.",
               "Call 0161 496 0872 about Ottoline Fairweather; no change. Drusen, as Smith noted."]
    REGISTRY.clear()
    try:
        assert scrub(reports[1]).text.count("Ottoline") == 1  # alone, the bare name is not seen
        assert register_found_names(reports) == 2  # Ottoline, Fairweather (no initials)
        out = scrub(reports[1])
        assert "Ottoline" not in out.text and "Fairweather" not in out.text
        assert "no change. Drusen" in out.text and "Smith" in out.text  # clinical words kept; no rule saw Smith
    finally:
        REGISTRY.clear()
