"""The ``medcl`` command: parses arguments and delegates.

Heavy modules load lazily, so ``medcl --help`` answers at once.

Exit codes: 0 success; 1 a clear medcl error (one line, plus the log file); 2 usage error;
3 internal error (a bug: the traceback is in the log file); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from medcl import __version__, phi
from medcl.errors import MedclError, TrackingError
from medcl.logs import setup_logging
from medcl.modalities import MODALITIES
from medcl.shipped import shipped

EPILOG = """\
examples:
  medcl demo                                   # synthesise demo data, pretrain, probe, calibrate (OCT, CPU)
  medcl demo --modality all                    # every modality
  medcl run pipelines/oct_severity.yaml --set data.manifest=/data/oct/manifest.csv
  medcl run pipelines/ct_lesion.yaml --dry-run # validate config + data, print the plan, train nothing
  medcl data validate /data/oct/manifest.csv   # one line per problem, exit 1 if any
  medcl data inspect /data/ct/series_001       # what medcl's reader sees (CT in HU)
  medcl report RUN_ID --out report.html

results: runs are tracked in MLflow (MLFLOW_TRACKING_URI, default ./mlflow.db);
open the UI with:  mlflow ui --backend-store-uri sqlite:///mlflow.db
"""

log = logging.getLogger("medcl")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that runs a pipeline: ``--set``, ``--force``, ``--resume``, ``--dry-run`` and ``--smoke``."""
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. --set pretrain.epochs=5 data.cache=disk (one or more after "
                        "each --set; repeatable; type-checked)")
    p.add_argument("--force", action="store_true", help="re-run stages that already completed")
    p.add_argument("--resume", action="store_true",
                   help="continue the latest unfinished run of this pipeline from its checkpoint")
    p.add_argument("--dry-run", action="store_true",
                   help="load and validate config and data, print the plan, train nothing")
    p.add_argument("--smoke", action="store_true",
                   help="every stage for a few steps on the given data (checks a pipeline in minutes)")


def build_parser() -> argparse.ArgumentParser:
    """The ``medcl`` argument parser: the global options and one subcommand per command, in ``--help`` order."""
    parser = argparse.ArgumentParser(
        prog="medcl",
        description="Contrastive pretraining, downstream tasks, calibration and reports for medical images "
        "and signals (CT, MRI, histopathology, OCT, fundus, ECG).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug output on the console")
    parser.add_argument("--log-dir", default=None, help="where log files go (default: ./medcl-runs/logs)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_pipeline_commands(sub)
    _add_data_command(sub)
    _add_apply_commands(sub)
    _add_evaluate_command(sub)
    _add_suggest_command(sub)
    _add_report_commands(sub)
    return parser


def _add_pipeline_commands(sub: Any) -> None:
    """``demo``, ``run`` and ``config``: the commands that load a pipeline."""
    p = sub.add_parser("demo", help="synthesise demo data and run a complete pipeline on CPU",
                       description="Synthesise the embedded demo data (if absent) and run pretrain → classify → "
                       "calibrate (→ report) on it, then print a summary table and the MLflow UI command.")
    p.add_argument("--modality", default="oct", help=f"one of {', '.join(MODALITIES)}, 'all' (those six), or an "
                   "extra demo: cytology (one-class detection of rare malignant tiles), histo-wsi (whole slides -> "
                   "tiles -> SimCLR -> attention MIL), ecg-report-clip (ECGs and their reports -> CLIP -> zero-shot "
                   "statements and retrieval), eye-multimodal (fundus + OCT of the same patients -> an encoder each -> "
                   "gated fusion, with an examination missing or mislinked) (default: oct)")
    p.add_argument("--data", default="medcl-demo-data", help="where the demo data lives / is written")
    p.add_argument("--seed", type=int, default=0, help="seed for data and training")
    _add_run_options(p)

    p = sub.add_parser("run", help="run a pipeline YAML (pretrain → classify/segment → calibrate → report)",
                       description="Run the stages of a pipeline in order, each a nested MLflow run. "
                       "Completed stages are skipped on a re-run unless --force.")
    p.add_argument("pipeline", nargs="?", help="pipeline YAML, e.g. pipelines/oct_severity.yaml, or the name of a "
                   "shipped pipeline (oct_severity, demo/oct), found in an installed medcl too")
    _add_run_options(p)

    p = sub.add_parser("config", help="print the resolved config of a pipeline (includes and --set applied)")
    p.add_argument("pipeline", nargs="?", help="pipeline YAML or the name of a shipped pipeline (as for run)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE")


def _add_data_command(sub: Any) -> None:
    """``data`` with its actions ``synth``, ``validate`` and ``inspect``."""
    data = sub.add_parser("data", help="synthesise, validate and inspect data",
                          description="Work with data: synth (demo set), validate (a manifest), inspect (a file).")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")
    p = dsub.add_parser("synth", help="write the demo data set in real formats, with manifests")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--modalities", nargs="+", default=None, metavar="NAME",
                   help=f"subset of {', '.join(MODALITIES)} (default: all six), or the extra demo sets cytology "
                   "(rare malignant tiles, for one-class detection), histo-wsi (whole slides labelled by a minority "
                   "of their tissue, for slide-level MIL) and eye (fundus + OCT of the same patients, for fusion)")
    p.add_argument("--patients", type=int, default=None, help="patients per modality (default: per-modality)")
    p.add_argument("--seed", type=int, default=0)
    p = dsub.add_parser("validate", help="check every row of a manifest; one line per problem; exit 1 if any",
                        description="Checks: file exists and is readable, shape/channels sane for the modality, "
                        "label in the class list, mask geometry, no patient in two splits, no duplicates, "
                        "no path escaping the dataset root; whole-slide images: a readable pyramid, and with "
                        "--magnification/--mpp/--tile-size the tiling a pipeline's data.wsi asks for (the "
                        "magnification reachable, tissue found). Prints `row N (path): what — how to fix`.")
    p.add_argument("manifest", help="CSV or MONAI datalist JSON")
    p.add_argument("--classes", default=None, help="comma-separated class list (default: labels found)")
    p.add_argument("--task", default=None, choices=["binary", "multiclass", "multilabel", "ordinal"])
    p.add_argument("--modality", default=None, help="expected modality of every row")
    p.add_argument("--root", default=None, help="dataset root paths may not escape (default: manifest folder)")
    p.add_argument("--no-read", action="store_true", help="check columns and files exist, do not decode files")
    p.add_argument("--workers", type=int, default=2, help="threads reading files")
    p.add_argument("--max-voxels", type=int, default=2**29,
                   help="largest file in values (channels x voxels) medcl may load (default 2**29 = 2 GiB as "
                   "float32, like data.max_voxels); 0 = no limit")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--magnification", type=float, default=None, help="slides: plan tiles at this objective power "
                   "(data.wsi.magnification)")
    p.add_argument("--mpp", type=float, default=None, help="slides: plan tiles at these microns per pixel (data.wsi.mpp)")
    p.add_argument("--tile-size", type=int, default=None, help="slides: tile side in pixels (data.wsi.tile_size; "
                   "default 224 when --magnification or --mpp is given)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="slides: minimum tissue fraction of a tile "
                   "(data.wsi.min_tissue)")
    p.add_argument("--slides", action="store_true", help="every row must be a whole-slide image (the manifest of a "
                   "pipeline with the slides stage): a flat TIFF or an image is a problem")
    p = dsub.add_parser("inspect", help="what medcl's reader gives for a file or series folder",
                        description="Before any modality preset: CT in HU, signals in physical units.")
    p.add_argument("path")
    p.add_argument("--format", default=None, help="force a reader (default: detected)")
    p.add_argument("--series", default=None, help="series index or UID when a folder holds several")
    p.add_argument("--sampling-rate", type=float, default=None, help="Hz, for CSV/NumPy signals")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _add_apply_commands(sub: Any) -> None:
    """``predict`` and ``embed``: a run's logged model applied to new files."""
    p = sub.add_parser("predict", help="apply a run's calibrated classifier (or its segmenter: masks) to new files; "
                       "one row per input",
                       description="Applies the model the calibrate stage logged (with exactly the run's evaluation "
                       "preprocessing) to a manifest, a folder or one file, and writes per-sample rows "
                       "(calibrated probabilities, the class at the run's operating point, status, model and run "
                       "id) and, when the input names patients, per-patient rows (OUT's stem + .patients). "
                       "A file that cannot be read is reported by name; the others are still predicted.")
    p.add_argument("source", metavar="RUN|MODEL_URI",
                   help="pipeline run id, runs:/<id>/model, models:/<name>/<version>, or an MLflow model folder")
    p.add_argument("input", metavar="INPUT", help="manifest (.csv/.json), folder, or one file (DICOM file or "
                   "series folder, NIfTI/NRRD, PNG/JPEG/TIFF, WFDB .hea / CSV ECG)")
    p.add_argument("--out", required=True, help="per-sample table, .csv or .parquet")
    _add_model_options(p)
    p.add_argument("--clear-ids", action="store_true",
                   help="write the manifest's patient ids in clear in YOUR output (default: pseudonymised with "
                   "MEDCL_PSEUDONYM_KEY, as in the run)")
    p.add_argument("--task", choices=["auto", "classify", "segment", "fuse"], default="auto",
                   help="classify (the calibrated classifier), segment (the segment stage's model: one mask per "
                   "input, NIfTI for volumes / PNG for images on the input's own grid, in OUT's stem + _masks/, "
                   "and a DICOM SEG for DICOM series) or fuse (the fuse stage's model: INPUT is a manifest with "
                   "patient_id, modality and path; one row per patient from all its examinations, with the gate "
                   "of each modality); auto: the classifier when the run has one, else fuse, else segment")
    p.add_argument("--no-dicom-seg", action="store_true", help="segment: no DICOM SEG next to the NIfTI masks")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("embed", help="encoder features of new files (one row per input) for your own analyses",
                       description="The features of the encoder inside the run's logged classifier (pooled, "
                       "f0 … fD-1), after exactly the run's evaluation preprocessing, with source, patient "
                       "(pseudonymised) and status columns. Inputs as for predict.")
    p.add_argument("source", metavar="RUN|MODEL_URI", help="as for predict")
    p.add_argument("input", metavar="INPUT", help="manifest, folder or one file (as for predict)")
    p.add_argument("--out", required=True, help="features table, .parquet or .csv")
    _add_model_options(p)
    p.add_argument("--clear-ids", action="store_true", help="patient ids in clear in YOUR output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_evaluate_command(sub: Any) -> None:
    """``evaluate``: external validation of a run's model on another site's labelled manifest."""
    p = sub.add_parser("evaluate", help="external validation: a run's model on another site's labelled manifest",
                       description="Applies the run's calibrated model (exactly its evaluation preprocessing) to a "
                       "labelled manifest from another site and measures: the run's metrics with patient-bootstrap "
                       "95% CIs at its operating point; calibration before and after the run's calibrator; "
                       "per-subgroup tables (site and columns with 2-8 values); dataset shift between the new "
                       "data's encoder features and the training data's (kernel MMD, permutation p-value, per "
                       "patient) with a plain-language reading. Logged as a nested MLflow run of RUN; the run's "
                       "report gains an 'External validation' section (rebuilt into OUT unless --no-report). Rows "
                       "that cannot be read or have no label are listed in predictions.csv with their status.")
    p.add_argument("source", metavar="RUN", help="pipeline run id (printed at the end of `medcl run`)")
    p.add_argument("manifest", metavar="MANIFEST", help="the new site's manifest (.csv/.tsv/.json) with labels")
    p.add_argument("--name", default=None, help="what to call this evaluation in MLflow and the report "
                   "(default: the manifest's file name)")
    p.add_argument("--out", default=None, help="folder for predictions.csv, evaluation.json and report.html "
                   "(default: medcl-evaluations/NAME)")
    p.add_argument("--label-column", default="label", help="manifest column with the labels (default: label)")
    p.add_argument("--label-sep", default=";", help="separator of multi-label labels (default: ;)")
    p.add_argument("--n-boot", type=int, default=1000, help="patient-bootstrap resamples for the CIs (default 1000)")
    p.add_argument("--permutations", type=int, default=1000, help="permutations for the shift p-value (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    _add_model_options(p)
    p.add_argument("--no-report", action="store_true", help="do not rebuild the HTML report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_suggest_command(sub: Any) -> None:
    """``suggest-hard-pairs``: confusable class pairs for ``supcon-hardneg`` from a run's validation confusions."""
    p = sub.add_parser("suggest-hard-pairs", help="propose confusable class pairs (supcon-hardneg) from a run's "
                       "validation confusion matrix",
                       description="Reads the validation predictions of RUN's primary model (predictions_val.csv of "
                       "its classify stage: a probe on the pretrained encoder unless configured otherwise), prints "
                       "the confusion matrix and the class pairs it confused most — (a predicted b + b predicted a) "
                       "/ (a + b) — and the YAML to state them. The test set is never read. Nothing is written: a "
                       "clinician confirms the pairs before they go into the pipeline.")
    p.add_argument("source", metavar="RUN", help="pipeline run id (printed at the end of `medcl run`)")
    p.add_argument("--min-rate", type=float, default=0.05, help="leave out pairs confused less often (default 0.05)")
    p.add_argument("--min-count", type=int, default=2, help="leave out pairs confused fewer times (default 2)")
    p.add_argument("--top", type=int, default=5, help="at most this many pairs (default 5)")
    p.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or ./mlflow.db")


def _cmd_suggest_hard_pairs(args: argparse.Namespace) -> int:
    """``medcl suggest-hard-pairs RUN``: print the validation confusions and the candidate pairs."""
    from medcl.tasks.hard_pairs import (  # lazy: keeps `medcl --help` instant (numpy)
        confusion_counts,
        format_suggestions,
        read_predictions,
        suggest_pairs,
    )
    from medcl.tracking.reader import RunReader  # lazy: mlflow, only for this command

    reader = RunReader(args.source, tracking_uri=args.tracking_uri)
    setup = reader.artifact_json("classify_setup.json", stage="classify")
    path = reader.artifact_path("predictions_val.csv", stage="classify")
    if setup is None or path is None:
        raise TrackingError(f"run {reader.run_id} has no validation predictions of a classifier",
                            where="classify stage (predictions_val.csv, classify_setup.json)",
                            fix="run the pipeline's classify stage with labelled validation patients (runs made "
                            "before medcl logged predictions_val.csv need it re-run: medcl run … --force)")
    classes = list(setup["classes"])
    y, pred = read_predictions(path, classes)
    cm = confusion_counts(y, pred, len(classes))
    pairs = suggest_pairs(cm, classes, min_rate=args.min_rate, min_count=args.min_count, top=args.top)
    print(f"run {reader.run_id}: {len(y)} validation samples")
    print(format_suggestions(pairs, cm, classes))
    return 0


def _add_report_commands(sub: Any) -> None:
    """``report`` (a run's HTML report) and ``bench`` (hands its arguments to ``benchmarks/runner.py``)."""
    p = sub.add_parser("report", help="execute the report notebook for a run and export self-contained HTML")
    p.add_argument("run_id", help="MLflow run id of a pipeline run")
    p.add_argument("--out", default=None, help="HTML path (default: report-RUN_ID.html)")
    p.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or ./mlflow.db")

    # the benchmarks live in the checkout's benchmarks/ folder, not in the package: this entry hands its arguments
    # to benchmarks/runner.py (its --help lists them)
    sub.add_parser("bench", add_help=False, help="run benchmarks/ and rewrite benchmarks/README.md (from a checkout; "
                   "medcl bench --help for the options)")


def _cmd_data(args: argparse.Namespace) -> int:
    """``medcl data synth|validate|inspect``; its exit code (validate: 1 when a row has a problem)."""
    if args.data_command == "synth":
        from medcl.data.synth import synthesize  # lazy: keeps `medcl --help` instant (numpy)

        manifest = synthesize(args.out, modalities=args.modalities, patients=args.patients, seed=args.seed)
        print(f"wrote demo data; manifest: {manifest}")
        return 0
    if args.data_command == "validate":
        from medcl.data.manifest import load_manifest  # lazy: keeps `medcl --help` instant (numpy)
        from medcl.data.validate import problems_to_json, validate_manifest  # lazy: numpy, as load_manifest

        manifest = load_manifest(args.manifest, root=args.root)
        classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
        problems = validate_manifest(manifest, classes=classes, task=args.task, check_files=not args.no_read,
                                     modality=args.modality, workers=args.workers,
                                     max_voxels=args.max_voxels or None)
        if not args.no_read and (args.magnification or args.mpp or args.tile_size):
            from medcl.config.schema import WsiConfig  # lazy: pydantic
            from medcl.data.wsi_plans import plan_slides  # lazy: numpy

            wsi = WsiConfig(magnification=args.magnification, mpp=args.mpp, tile_size=args.tile_size or 224,
                            min_tissue=args.min_tissue)
            bad = {p.row for p in problems}
            _, slide_problems = plan_slides([r for r in manifest.records if r.row not in bad], wsi, 0, None)
            problems = sorted([*problems, *slide_problems], key=lambda p: p.row)
        if not args.no_read and args.slides:
            from medcl.data.wsi_plans import not_slides  # lazy: numpy

            bad = {p.row for p in problems}
            problems = sorted([*problems, *not_slides([r for r in manifest.records if r.row not in bad])],
                              key=lambda p: p.row)
        if args.json:
            print(problems_to_json(problems))
        else:
            for pr in problems:
                print(pr.line())
            n = len(manifest.records)
            print(f"{n} rows checked, {len(problems)} problem(s)" if problems else f"{n} rows checked, no problems")
        return 1 if problems else 0
    if args.data_command == "inspect":
        # lazy: keeps `medcl --help` instant (numpy)
        from medcl.data.inspect import format_inspect, inspect_path

        opts = {}
        if args.series is not None:
            opts["series"] = int(args.series) if args.series.isdigit() else args.series
        if args.sampling_rate is not None:
            opts["sampling_rate"] = args.sampling_rate
        info = inspect_path(args.path, format=args.format, **opts)
        print(json.dumps(info, indent=2, default=str) if args.json else format_inspect(info))
        return 0
    build_parser().parse_args(["data", "--help"])
    return 2


def _pipeline_after_sets(args: argparse.Namespace) -> bool:
    """Take back a pipeline that ``--set`` swallowed; False when there is no pipeline at all.

    ``--set`` takes several values, so ``medcl run --set a=1 PIPELINE`` hands the pipeline to ``--set``: the one
    value without ``=`` (not an override) becomes ``args.pipeline`` again.
    """
    if args.pipeline is None:
        rest = [v for v in args.overrides if "=" not in v]
        if len(rest) == 1:
            args.pipeline = rest[0]
            args.overrides = [v for v in args.overrides if "=" in v]
    return args.pipeline is not None


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """What every command that applies a logged model takes: the store, the batch size and the device."""
    p.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or ./mlflow.db")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: CUDA when present)")


def _shipped_pipeline(name: str) -> str:
    """The pipeline file ``name`` stands for: ``name`` itself when it exists, else the shipped pipeline it names.

    ``oct_severity``, ``pipelines/oct_severity.yaml``, ``demo/oct`` … are found in the pipelines shipped with
    medcl, so an installed medcl runs them without the checkout; an unknown name is returned as it is.
    """
    if Path(name).exists():
        return name
    try:
        root = shipped("pipelines", env="MEDCL_PIPELINES")
    except MedclError:
        return name
    rel = name[len("pipelines/"):] if name.startswith("pipelines/") else name
    for cand in (root / rel, root / f"{rel}.yaml"):
        if cand.is_file():
            return str(cand)
    return name


def _print_evaluation(res) -> None:
    """The end-of-evaluation table and where its outputs are."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"external validation '{res.name}': {res.n_ok} sample(s) (95% CI, patient-level bootstrap)")
    t.add_column("metric")
    t.add_column("value")
    for row in res.summary:
        t.add_row(row["metric"], row["value"])
    console.print(t)
    if "reading" in res.shift:
        console.print(res.shift["reading"])
    if res.n_excluded:
        console.print(f"{res.n_excluded} row(s) left out (unreadable or unlabelled): see the status column of "
                      f"{res.out_dir / 'predictions.csv'}")
    console.print(f"MLflow run: {res.evaluation_run_id} (nested in the pipeline run)")
    console.print(f"outputs: {res.out_dir}" + (f"\nreport: {res.report}" if res.report else ""))


def _rank_prefix() -> str:
    """``[rank N] `` under torchrun for ranks other than 0, so a job's console says who failed."""
    rank = os.environ.get("RANK", "0")
    return f"[rank {rank}] " if rank.isdigit() and int(rank) > 0 else ""


def benchmarks_dir() -> Path | None:
    """The checkout's ``benchmarks/`` folder (``MEDCL_BENCHMARKS`` overrides), ``None`` for an installed wheel."""
    env = os.environ.get("MEDCL_BENCHMARKS")
    for c in ([Path(env)] if env else []) + [Path(__file__).resolve().parents[1] / "benchmarks",
                                              Path.cwd() / "benchmarks"]:
        if (c / "runner.py").is_file():
            return c
    return None


def _bench(argv: list[str]) -> int:
    """``medcl bench ARGS``: ``python benchmarks/runner.py ARGS`` in the checkout."""
    import subprocess

    bdir = benchmarks_dir()
    if bdir is None:
        print("error: cannot find the benchmarks/ folder (medcl bench) — run from the medcl checkout, or set "
              "MEDCL_BENCHMARKS to its benchmarks/ folder", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(bdir / "runner.py"), *argv])


def _dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command ``args.command`` (logging is set up); its exit code (2: no such command)."""
    if args.command == "data":
        return _cmd_data(args)
    if args.command == "config":
        from medcl.config import dump_yaml, load_config  # lazy: keeps `medcl --help` instant (pydantic, yaml)

        print(dump_yaml(load_config(args.pipeline, args.overrides)), end="")
        return 0
    if args.command == "run":
        from medcl.pipeline import run_pipeline_file  # lazy: keeps `medcl --help` instant (torch)

        return run_pipeline_file(args.pipeline, overrides=args.overrides, force=args.force, resume=args.resume,
                                 dry_run=args.dry_run, smoke=args.smoke)
    if args.command == "demo":
        from medcl.demo import run_demo  # lazy: keeps `medcl --help` instant (torch)

        return run_demo(modality=args.modality, data_dir=args.data, seed=args.seed, overrides=args.overrides,
                        force=args.force, resume=args.resume, dry_run=args.dry_run, smoke=args.smoke)
    if args.command in ("predict", "embed"):
        return _cmd_apply(args)
    if args.command == "evaluate":
        from medcl.evaluate import evaluate  # lazy: keeps `medcl --help` instant (torch)

        res = evaluate(args.source, args.manifest, name=args.name, out=args.out, tracking_uri=args.tracking_uri,
                       batch_size=args.batch_size, device=args.device, n_boot=args.n_boot,
                       n_permutations=args.permutations, label_column=args.label_column,
                       label_sep=args.label_sep, seed=args.seed, progress=not args.no_progress,
                       report=not args.no_report)
        _print_evaluation(res)
        return 0
    if args.command == "suggest-hard-pairs":
        return _cmd_suggest_hard_pairs(args)
    if args.command == "report":
        from medcl.reporting.html import build_report  # lazy: keeps `medcl --help` instant (numpy)

        out = build_report(args.run_id, out=args.out, tracking_uri=args.tracking_uri)
        print(f"report: {out}")
        return 0
    return 2


def _cmd_apply(args: argparse.Namespace) -> int:
    """``medcl predict`` (classes, or masks for a segmentation model) and ``medcl embed``; 1 when no input was read."""
    from medcl import predict as pr  # lazy: keeps `medcl --help` instant (numpy)

    kind = pr.model_kind(args.source, args.tracking_uri, args.task) if args.command == "predict" else "classify"
    if kind == "fuse":
        res = pr.predict_patients(args.source, args.input, args.out, tracking_uri=args.tracking_uri,
                                  batch_size=args.batch_size, device=args.device, clear_ids=args.clear_ids,
                                  progress=not args.no_progress)
        print(f"classified the patients of {res.n_ok} examination(s) with {res.model_uri}"
              + (f"; {res.n_failed} could not be read (status column)" if res.n_failed else ""))
        print(f"per examination: {res.samples}\nper patient: {res.patients}")
        return 1 if res.n_ok == 0 else 0
    if kind == "segment":
        res = pr.predict_masks(args.source, args.input, args.out, tracking_uri=args.tracking_uri,
                               device=args.device, clear_ids=args.clear_ids, progress=not args.no_progress,
                               dicom_seg=not args.no_dicom_seg)
        print(f"segmented {res.n_ok} sample(s) with {res.model_uri}"
              + (f"; {res.n_failed} could not be read (status column)" if res.n_failed else ""))
        print(f"per sample: {res.samples}\nmasks: {res.samples.parent / (res.samples.stem + '_masks')}")
        return 1 if res.n_ok == 0 else 0
    fn = pr.predict if args.command == "predict" else pr.embed
    res = fn(args.source, args.input, args.out, tracking_uri=args.tracking_uri,
             batch_size=args.batch_size, device=args.device, clear_ids=args.clear_ids,
             progress=not args.no_progress)
    print(f"{'predicted' if args.command == 'predict' else 'embedded'} {res.n_ok} sample(s) with {res.model_uri}"
          + (f"; {res.n_failed} could not be read (status column)" if res.n_failed else ""))
    print(f"per sample: {res.samples}" + (f"\nper patient: {res.patients}" if res.patients else ""))
    return 1 if res.n_ok == 0 else 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``medcl`` command line ``argv`` (default: ``sys.argv[1:]``) and return the exit code.

    Codes: 0 success; 1 a medcl error (one line on stderr, PHI-redacted, plus the log file's path); 2 usage
    error; 3 internal error (the traceback is in the log file); 130 interrupted.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return _bench(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.version:
        print(f"medcl {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2

    if args.command in ("run", "config") and not _pipeline_after_sets(args):
        print(f"usage error: medcl {args.command} needs a pipeline YAML, e.g. medcl {args.command} "
              "pipelines/oct_severity.yaml --set data.manifest=/data/oct/manifest.csv", file=sys.stderr)
        return 2

    if args.command in ("run", "config"):
        args.pipeline = _shipped_pipeline(args.pipeline)

    log_path = setup_logging(args.log_dir or Path("medcl-runs") / "logs", verbose=args.verbose)
    try:
        return _dispatch(args)
    except MedclError as exc:
        print(f"{_rank_prefix()}error: {phi.redact(exc.line())}", file=sys.stderr)
        if log_path:
            print(f"(log: {log_path})", file=sys.stderr)
        log.debug("medcl error", exc_info=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line on the console, the traceback in the log
        log.debug("internal error", exc_info=True)
        print(f"{_rank_prefix()}internal error: {type(exc).__name__}: {phi.redact(str(exc))[:500]}", file=sys.stderr)
        if log_path:
            print(f"(traceback in {log_path}; please report it)", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
