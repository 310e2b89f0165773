"""``classify.pairs``: which class pairs get their own AUROC, checked before anything is trained."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from medcl.errors import ConfigError
from medcl.stages.classify import class_pairs

CLASSES = ["tumour", "stroma", "normal"]


def _cfg(pairs=None, method_options=None):
    return SimpleNamespace(classify=SimpleNamespace(pairs=pairs),
                           pretrain=SimpleNamespace(method_options=method_options or {}))


def test_named_pairs_are_kept_and_the_default_is_the_hard_pairs_of_the_pretraining():
    assert class_pairs(_cfg([["stroma", "normal"]]), CLASSES, "multiclass") == [("stroma", "normal")]
    hardneg = {"hard_pairs": [["stroma", "normal"]], "hard_weight": 2.0}
    assert class_pairs(_cfg(None, hardneg), CLASSES, "multiclass") == [("stroma", "normal")]
    assert class_pairs(_cfg([], hardneg), CLASSES, "multiclass") == []  # [] turns the default off
    assert class_pairs(_cfg(None, {}), CLASSES, "ordinal") == []
    assert class_pairs(_cfg(None, hardneg), CLASSES, "binary") == []  # the default never errs


@pytest.mark.parametrize("pairs, match", [
    ([["stroma", "normla"]], r"classify.pairs\[0\].*'normla'.*did you mean 'normal'"),
    ([["stroma", "stroma"]], "two different classes"),
    ([["tumour", "stroma", "normal"]], "two different classes"),
])
def test_a_bad_pair_is_one_clear_error(pairs, match):
    with pytest.raises(ConfigError, match=match):
        class_pairs(_cfg(pairs), CLASSES, "multiclass")


def test_pairs_on_a_binary_task_are_refused():
    with pytest.raises(ConfigError, match="multiclass and ordinal tasks, this one is binary"):
        class_pairs(_cfg([["a", "b"]]), ["a", "b"], "binary")
