"""Confusable pairs from a validation confusion matrix (supcon-hardneg's suggest-hard-pairs)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from medcl.errors import ConfigError, DataError
from medcl.tasks.hard_pairs import confusion_counts, format_suggestions, read_predictions, suggest_pairs

CLASSES = ["normal", "early", "intermediate", "late"]
# rows truth, columns prediction: early/intermediate confused 6 + 4 times in 20 + 20 samples (25 %),
# normal/early 2 + 1 in 30 + 20 (6 %), intermediate/late once (below min_count 2)
CM = np.array([[28, 2, 0, 0],
               [1, 13, 6, 0],
               [0, 4, 15, 1],
               [0, 0, 0, 10]])


def test_confusion_counts_agree_with_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    np.testing.assert_array_equal(confusion_counts(y, p, 4), confusion_matrix(y, p, labels=range(4)))


def test_pairs_ranked_by_mutual_confusion_rate_computed_by_hand():
    pairs = suggest_pairs(CM, CLASSES, min_rate=0.05, min_count=2)
    assert [(s.a, s.b) for s in pairs] == [("early", "intermediate"), ("normal", "early")]
    assert pairs[0].rate == pytest.approx(10 / 40) and (pairs[0].a_as_b, pairs[0].b_as_a) == (6, 4)
    assert pairs[1].rate == pytest.approx(3 / 50)
    assert [(s.a, s.b) for s in suggest_pairs(CM, CLASSES, min_rate=0.10)] == [("early", "intermediate")]
    assert len(suggest_pairs(CM, CLASSES, min_rate=0.0, min_count=1, top=10)) == 3
    assert suggest_pairs(np.diag([5, 5, 5, 5]), CLASSES) == []


def test_the_printed_yaml_states_the_pairs_for_the_method():
    import yaml

    text = format_suggestions(suggest_pairs(CM, CLASSES), CM, CLASSES)
    snippet = yaml.safe_load(text[text.index("pretrain:"):])
    assert snippet["pretrain"]["method"] == "supcon-hardneg"
    assert snippet["pretrain"]["method_options"]["hard_pairs"] == [["early", "intermediate"], ["normal", "early"]]
    assert "confirm with a clinician" in text


def test_read_predictions_refuses_multilabel_files_and_foreign_classes(tmp_path):
    ml = tmp_path / "ml.csv"
    ml.write_text("index,y_AF,y_BBB,y_pred,p_AF,p_BBB\n0,1,0,0,0.9,0.1\n")
    with pytest.raises(DataError, match="multi-label"):
        read_predictions(ml, ["AF", "BBB"])
    bad = tmp_path / "bad.csv"
    bad.write_text("index,y_true,y_pred,p_a,p_b\n3,0,1,0.4,0.6\n4,5,1,0.4,0.6\n")
    with pytest.raises(DataError, match="row 3"):
        read_predictions(bad, ["a", "b"])
    good = tmp_path / "good.csv"
    good.write_text("index,y_true,y_pred,p_a,p_b\n3,0,1,0.4,0.6\n4,1,1,0.4,0.6\n")
    y, p = read_predictions(good, ["a", "b"])
    assert y.tolist() == [0, 1] and p.tolist() == [1, 1]


def test_supcon_hardneg_refuses_to_run_as_plain_supcon():
    from medcl.methods import build_method
    from medcl.networks import build_encoder

    enc = build_encoder("tiny_cnn", in_channels=1, spatial_dims=2)
    with pytest.raises(ConfigError, match="needs the confusable class pairs") as info:
        build_method("supcon-hardneg", enc, classes=CLASSES)
    assert "suggest-hard-pairs" in info.value.fix and info.value.where == "pretrain.method_options.hard_pairs"
    with pytest.raises(ConfigError, match="hard_weight 1"):
        build_method("supcon-hardneg", enc, classes=CLASSES, hard_pairs=[["early", "intermediate"]], hard_weight=1.0)
    m = build_method("supcon-hardneg", enc, classes=CLASSES, hard_pairs=[["early", "intermediate"]])
    assert m.criterion.hard_pairs == [(1, 2)]


def test_the_histo_egcl_pipeline_states_pairs_of_its_own_classes():
    from pathlib import Path

    from medcl.methods import build_method
    from medcl.networks import build_encoder
    from medcl.pipeline import load_pipeline

    root = Path(__file__).resolve().parents[2]
    cfg = load_pipeline(root / "pipelines" / "histo_tissue_egcl.yaml", ["data.manifest=x.csv"])
    assert cfg.pretrain.method == "supcon-hardneg"
    enc = build_encoder("tiny_cnn", in_channels=3, spatial_dims=2)
    m = build_method(cfg.pretrain.method, enc, classes=cfg.data.classes, **cfg.pretrain.method_options)
    pairs = {frozenset(cfg.data.classes[i] for i in p) for p in m.criterion.hard_pairs}
    assert pairs == {frozenset({"stroma", "normal"})}
