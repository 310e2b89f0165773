"""``medcl suggest-hard-pairs RUN`` on a real run: the validation confusions of its primary model, never the test set."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix

from medcl.cli import main


def _printed_matrix(out: str, k: int) -> np.ndarray:
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("validation confusion matrix")) + 2
    return np.array([[int(v) for v in ln.split()[-k:]] for ln in lines[start:start + k]])


def test_suggest_hard_pairs_prints_the_runs_validation_confusions(trained_oct, capsys):
    ctx, uri = trained_oct["ctx"], trained_oct["uri"]
    arrays = np.load(ctx.stage_dir("classify") / "primary.npz")
    classes = ctx.data.classes
    y, pred = arrays["val_y"], arrays["val_logits"].argmax(1)
    expected = confusion_matrix(y, pred, labels=range(len(classes)))

    rc = main(["suggest-hard-pairs", ctx.parent_run_id, "--tracking-uri", uri, "--min-rate", "0", "--min-count", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"{len(y)} validation samples" in out
    np.testing.assert_array_equal(_printed_matrix(out, len(classes)), expected)
    # every pair the model confused at least once is listed with its counts from the matrix
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            if expected[i, j] + expected[j, i]:
                assert (f"{classes[i]} / {classes[j]}: {expected[i, j]} of {expected[i].sum()} {classes[i]} predicted "
                        f"{classes[j]}, {expected[j, i]} of {expected[j].sum()}") in out


def test_suggest_hard_pairs_on_an_unknown_run_says_so(trained_oct, capsys):
    rc = main(["suggest-hard-pairs", "0" * 32, "--tracking-uri", trained_oct["uri"]])
    assert rc == 1
    assert "no run" in capsys.readouterr().err
