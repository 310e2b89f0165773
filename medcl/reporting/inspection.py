"""Report sections for inspecting the model: the 2-D map of encoder features and saliency examples."""

from __future__ import annotations

from medcl.reporting import figures
from medcl.reporting.blocks import Missing, esc, img, note, para
from medcl.reporting.data import ReportData


def embedding_map(d: ReportData) -> list[str]:
    """Section "Embedding map": the 2-D map (t-SNE or similar) of the encoder's features, coloured by true class.

    Raises:
        Missing: the run logged no ``embedding_map.npz``.
    """
    e = d.embedding
    if e is None:
        raise Missing("no feature map (embedding_map.npz) was logged: the classify stage did not finish, or the "
                      "run was made by an older medcl.")
    method = str(e.get("method", "t-SNE"))
    names = [str(c) for c in e.get("classes", d.classes)]
    png = figures.embedding_figure(e["xy"], e["label"], names, e.get("split"), method)
    return [para(f"Each dot is one sample, placed by {esc(method)} so that samples the encoder finds similar lie "
                 "close together; colours are the true classes. If the colours form separate groups, the "
                 "encoder's features carry the class information. Distances between groups and the axes have no "
                 "meaning."), img(png, f"{method} map of encoder features coloured by class")]


def saliency(d: ReportData) -> list[str]:
    """Section "Saliency": where the model looked, for its most confident test cases.

    Grad-CAM maps (images) or input × gradient maps (signals), correct and misclassified cases apart.

    Raises:
        Missing: the run logged no saliency examples.
    """
    ex = d.saliency
    if not ex:
        raise Missing("no saliency examples were logged: the classify stage did not finish, or the run was made "
                      "by an older medcl.")
    method = ex[0].get("method", "Grad-CAM")
    how = ("Grad-CAM colours the image regions whose features pushed the model towards its answer (red = most)."
           if method == "Grad-CAM" else
           "Input × gradient highlights the leads and moments of the signal that pushed the model towards its "
           "answer (red = most); the percentage is each lead's share.")
    out = [para(f"Where does the model look? {how} Shown for the test cases it was most confident about, "
                "correct and incorrect."),
           note("saliency shows where the evidence came from, not why; check that it points at plausible "
                "anatomy or signal features rather than at text, borders or devices.")]
    for ok, title in ((True, "Correctly classified"), (False, "Misclassified")):
        sel = [x for x in ex if bool(x.get("correct")) == ok]
        out.append(f"<h4>{title}</h4>")
        if not sel:
            out.append(para("No such test case." if ok else "No misclassified test case — every test case was "
                            "classified correctly."))
            continue
        figs = "".join("<figure>" + img(x["png"], f"true {x.get('true')}, predicted {x.get('predicted')}", "")
                       + "</figure>" for x in sel)
        out.append(f'<div class="medcl-grid">{figs}</div>')
    return out
