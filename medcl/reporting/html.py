"""``medcl report RUN_ID``: execute ``notebooks/report.ipynb`` for a run and export self-contained HTML.

The notebook is executed with papermill (parameters ``run_id`` and ``tracking_uri``) in a
temporary folder, on a Jupyter kernel running this Python (kernel ``python3``; a kernelspec is
installed into ``sys.prefix`` when none fits). The executed notebook is exported by nbconvert
with code cells hidden, figures embedded as base64 PNG and no script or stylesheet loaded from the
network — one HTML file that opens offline — and logged as ``report/report.html`` to the
pipeline run. The notebook reads MLflow only (:mod:`medcl.reporting`); nothing is re-trained.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from medcl import phi
from medcl.errors import ConfigError, StageError
from medcl.shipped import shipped
from medcl.tracking import default_tracking_uri
from medcl.tracking.reader import RunReader, strip_data_uris

log = logging.getLogger(__name__)
KERNEL_NAME = "python3"
FALLBACK_KERNEL_NAME = "medcl-python3"

#: the lab template without its network scripts (require.js, MathJax, mermaid, widgets): offline HTML
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""


def notebook_path() -> Path:
    """``notebooks/report.ipynb`` shipped with medcl (``MEDCL_REPORT_NOTEBOOK`` overrides; :mod:`medcl.shipped`)."""
    env = os.environ.get("MEDCL_REPORT_NOTEBOOK")
    if env:
        if not Path(env).is_file():
            raise ConfigError(f"MEDCL_REPORT_NOTEBOOK={env} is not a file", where="medcl report",
                              fix="point it at a report notebook, or unset it to use the one medcl ships")
        return Path(env)
    return shipped("notebooks", must_have="report.ipynb") / "report.ipynb"


def kernel_name() -> str:
    """A Jupyter kernel that runs *this* interpreter (so the notebook imports this medcl).

    ``python3`` when its kernelspec starts this Python (jupyter_client maps a bare ``python``
    to ``sys.executable``); otherwise a kernelspec is installed into ``sys.prefix`` (the venv).
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    def runs_us(name: str) -> bool:
        try:
            exe = KernelSpecManager().get_kernel_spec(name).argv[0]
        except (NoSuchKernel, IndexError):
            return False
        if exe in ("python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])):
            return True
        try:
            return Path(exe).resolve() == Path(sys.executable).resolve()
        except OSError:
            return False

    if runs_us(KERNEL_NAME):
        return KERNEL_NAME
    from ipykernel.kernelspec import install

    # "python3" is missing, or belongs to another interpreter: install one for this venv
    name = KERNEL_NAME if not _kernel_exists(KERNEL_NAME) else FALLBACK_KERNEL_NAME
    log.info("report: installing Jupyter kernelspec %r for %s into %s", name, sys.executable, sys.prefix)
    install(kernel_name=name, prefix=sys.prefix, display_name=f"Python 3 ({name})")
    if not runs_us(name):
        raise ConfigError(f"the Jupyter kernel {name!r} does not run {sys.executable}", where="medcl report",
                          fix=f"remove the conflicting kernelspec (`jupyter kernelspec remove {name}`) and retry")
    return name


def _kernel_exists(name: str) -> bool:
    from jupyter_client.kernelspec import KernelSpecManager

    return name in KernelSpecManager().find_kernel_specs()


def export_html(nb, title: str) -> str:
    """Executed notebook → one self-contained HTML page (inputs hidden, images inline, no network)."""
    import jinja2
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", extra_loaders=[jinja2.DictLoader({"medcl_report.html.j2": _TEMPLATE})],
                            template_file="medcl_report.html.j2", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, embed_images=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    return body


def _strip_streams(nb) -> None:
    """Drop stdout/stderr text (library warnings, progress) from outputs: the report shows displays only."""
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                log.debug("report notebook %s: %s", o.get("name"), str(o.get("text", ""))[:500])
                continue
            kept.append(o)
        cell["outputs"] = kept


def build_report(run_id: str, *, out: str | Path | None = None, tracking_uri: str | None = None,
                 log_to_run: bool = True) -> Path:
    """Execute the report notebook for ``run_id`` and write self-contained HTML.

    Args:
        run_id: the pipeline run (a stage run's id is resolved to its pipeline run).
        out: HTML path; default ``report-<run_id>.html`` in the working directory.
        tracking_uri: MLflow store; default ``MLFLOW_TRACKING_URI`` or ``./mlflow.db``.
        log_to_run: also log the HTML as ``report/report.html`` to the pipeline run.

    Returns:
        The HTML path.

    Raises:
        TrackingError: the store cannot be read or has no such run.
        StageError: the notebook failed to execute.
    """
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    uri = tracking_uri or default_tracking_uri()
    reader = RunReader(run_id, uri)  # fails clearly (TrackingError) before a kernel is started
    run_id = reader.run_id
    out_path = Path(out) if out else Path.cwd() / f"report-{run_id}.html"
    template = notebook_path()
    kernel = kernel_name()
    logging.getLogger("papermill").setLevel(logging.WARNING)  # its per-cell INFO lines are noise here
    with tempfile.TemporaryDirectory(prefix="medcl-report-") as tmp:
        src, executed = Path(tmp) / "report.ipynb", Path(tmp) / "report-executed.ipynb"
        shutil.copyfile(template, src)
        try:
            papermill.execute_notebook(str(src), str(executed), parameters={"run_id": run_id, "tracking_uri": uri},
                                       kernel_name=kernel, cwd=tmp, progress_bar=False, log_output=False,
                                       request_save_on_cell_execute=False)
        except PapermillExecutionError as exc:
            raise StageError(f"the report notebook failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue[:300]}",
                             where=str(template), fix="this is a bug in the report; the run itself is intact — "
                             "please report it with the run id") from None
        nb = nbformat.read(executed, as_version=4)
    _strip_streams(nb)
    html = export_html(nb, title=f"medcl report — {reader.run.name}")
    # values this process saw as PHI must never reach the report (the text; base64 images are not text)
    phi.check_value(strip_data_uris(html), where="report HTML")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(html, encoding="utf-8")
    if log_to_run:
        if out_path.name == "report.html":
            reader.log_artifact(out_path, "report")
        else:
            with tempfile.TemporaryDirectory(prefix="medcl-report-") as tmp:
                named = Path(tmp) / "report.html"
                shutil.copyfile(out_path, named)
                reader.log_artifact(named, "report")
    log.info("report for run %s written to %s", run_id, out_path)
    return out_path
