"""Every row of ``docs/bad-inputs.md`` reproduced, and the readers fuzzed.

* The matrix: for each :data:`bad_inputs.CASES` entry the malformed input is built from real
  files, the ``medcl`` command is run in this process, and its row in the document (number,
  input, command and the exact printed line) must equal the row rendered from this run.
* The fuzzer (a short pass in the default run, a long one marked slow): bytes of valid tiny files of every format (PNG, TIFF, DICOM, NIfTI, NRRD, WFDB
  header and data) are mutated by hypothesis and read with :func:`medcl.readers.read`; the
  only exception allowed out is a :class:`~medcl.errors.MedclError`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_inputs import CASES, DOC, demo_data, doc_rows, message, row_line, unmet

AREAS = {"manifest", "config", "oct", "fundus", "histo", "ct", "mri", "ecg", "resources"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return demo_data(tmp_path_factory.mktemp("bad-inputs-demo"))


def test_the_document_lists_every_case_once_in_order():
    rows = doc_rows(DOC.read_text(encoding="utf-8"))
    assert list(rows) == [c.id for c in CASES], "regenerate with: python tests/reliability/bad_inputs.py"
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    assert {c.area for c in CASES} == AREAS  # six modalities, the manifest, the config and resources


@pytest.mark.parametrize("number", range(1, len(CASES) + 1), ids=[c.id for c in CASES])
def test_bad_input_row(number, demo, tmp_path):
    case = CASES[number - 1]
    argv, msg = message(case, tmp_path / "case", demo)
    assert "Traceback" not in msg and not msg.startswith(("internal error", "(nothing printed", "(accepted"))
    assert unmet(case.id, msg) == [], msg  # the hand-written expectation, independent of what the code printed
    want = doc_rows(DOC.read_text(encoding="utf-8"))[case.id]
    assert row_line(number, case, argv, msg) == want, "regenerate docs/bad-inputs.md: python tests/reliability/bad_inputs.py"


# --------------------------------------------------------------------------------------------- fuzzing
def _seed_files(demo: Path, out: Path) -> dict[str, tuple[str, bytes, dict[str, bytes]]]:
    """``{name: (file name, bytes, companion files)}`` of valid tiny files of every format."""
    import numpy as np
    import tifffile
    from bad_inputs import nifti, wfdb_record

    out.mkdir(parents=True, exist_ok=True)
    nrrd_path = out / "v.nrrd"
    import nrrd

    nrrd.write(str(nrrd_path), np.arange(4 * 4 * 3, dtype=np.int16).reshape(4, 4, 3),
               {"space": "left-posterior-superior", "space directions": np.eye(3), "space origin": np.zeros(3)})
    nifti(out / "v.nii", np.arange(4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3))
    nifti(out / "v.nii.gz", np.arange(4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3))
    tifffile.imwrite(out / "t.tif", np.arange(16 * 16, dtype=np.uint16).reshape(16, 16))
    wfdb_record(out, "r", np.sin(np.linspace(0, 20, 200))[:, None].repeat(2, 1))
    png = next((demo / "oct" / "images").glob("*.png")).read_bytes()
    dcm = sorted(next(p for p in (demo / "ct" / "series").iterdir() if p.is_dir()).iterdir())[0].read_bytes()
    hea, dat = (out / "r.hea").read_bytes(), (out / "r.dat").read_bytes()
    return {
        "png": ("x.png", png, {}),
        "tiff": ("x.tif", (out / "t.tif").read_bytes(), {}),
        "dicom": ("x.dcm", dcm, {}),
        "nifti": ("x.nii", (out / "v.nii").read_bytes(), {}),
        "nifti_gz": ("x.nii.gz", (out / "v.nii.gz").read_bytes(), {}),
        "nrrd": ("x.nrrd", nrrd_path.read_bytes(), {}),
        "wfdb_header": ("r.hea", hea, {"r.dat": dat}),
        "wfdb_data": ("r.dat", dat, {"r.hea": hea}),
    }


FORMATS = ["png", "tiff", "dicom", "nifti", "nifti_gz", "nrrd", "wfdb_header", "wfdb_data"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_short_fuzz_pass_raises_only_medcl_errors(fmt, demo, tmp_path_factory):
    """The default run's pass: 80 mutated inputs per format (640 in all), fixed seed, seconds per format."""
    _fuzz(fmt, demo, tmp_path_factory, examples=80)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzzed_files_raise_only_medcl_errors(fmt, demo, tmp_path_factory):
    """The long pass (``make test-all``): 300 mutated inputs per format."""
    _fuzz(fmt, demo, tmp_path_factory, examples=300)


def _fuzz(fmt, demo, tmp_path_factory, examples):
    import warnings

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from medcl.errors import MedclError
    from medcl.readers import read

    work = tmp_path_factory.mktemp(f"fuzz-{fmt}")
    name, seed, companions = _seed_files(demo, work / "seed")[fmt]
    position = st.one_of(st.integers(0, min(len(seed), 1024) - 1), st.integers(0, len(seed) - 1))  # headers first
    mutation = st.lists(st.tuples(position, st.integers(0, 255)), min_size=1, max_size=8)
    cut = st.one_of(st.none(), st.integers(0, len(seed)))

    @settings(max_examples=examples, deadline=2000, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(mutation, cut, st.binary(max_size=16))
    def check(flips, truncate_at, tail):
        data = bytearray(seed)
        for pos, value in flips:
            data[pos] = value
        data = bytes(data[:truncate_at]) if truncate_at is not None else bytes(data) + tail
        folder = work / "case"
        folder.mkdir(exist_ok=True)
        for other, content in companions.items():
            (folder / other).write_bytes(content)
        (folder / name).write_bytes(data)
        target = folder / ("r.hea" if fmt.startswith("wfdb") else name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                sample = read(target)
            except MedclError:
                return
        assert sample.array.dtype.name == "float32"

    check()


def test_every_case_has_a_hand_written_expectation():
    from bad_inputs import EXPECT

    assert set(EXPECT) == {c.id for c in CASES}
    assert all(len(v) >= 3 for v in EXPECT.values())  # where, what is wrong, the fix (at least)
