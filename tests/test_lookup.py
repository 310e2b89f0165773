"""medcl.lookup: registry look-ups and "did you mean" hints, against hand-written expectations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import medcl
from medcl.errors import ConfigError, DataError, MedclError
from medcl.lookup import did_you_mean, look_up, nearest

OPTIMIZERS = {"adamw": "AdamW factory", "sgd": "SGD factory", "lars": "LARS factory"}


# ----------------------------------------------------------------------------- nearest


def test_nearest_best_first_and_empty_when_nothing_is_close():
    assert nearest("lasr", ["adamw", "sgd", "lars"]) == ["lars"]
    assert nearest("resnet5", ["vit_b16", "resnet18", "resnet50"], n=2) == ["resnet50", "resnet18"]
    assert nearest("zzz", ["adamw", "sgd", "lars"]) == []


def test_nearest_compares_str_of_values_and_options():
    assert nearest(12, [11, 13, 120]) == ["120"]
    assert nearest("sdg", {"sgd": 1, "adamw": 2}) == ["sgd"]  # a mapping offers its keys


def test_nearest_cutoff():
    assert nearest("dsk", ["disk"]) == ["disk"]  # ratio 6/7
    assert nearest("dsk", ["disk"], cutoff=0.9) == []


def test_nearest_ignore_case_returns_the_original_spelling():
    assert nearest("PATIENT", ["Patient_ID", "path"]) == []
    assert nearest("PATIENT", ["Patient_ID", "path"], ignore_case=True) == ["Patient_ID"]


# ----------------------------------------------------------------------------- did_you_mean


def test_did_you_mean_forms():
    assert did_you_mean("lasr", ["adamw", "sgd", "lars"]) == "did you mean 'lars'? "
    assert did_you_mean("resnet5", ["resnet18", "resnet50"], n=2) == "did you mean 'resnet50', 'resnet18'? "
    assert did_you_mean("levle", ["level", "series"], paren=True) == " (did you mean 'level'?)"
    assert did_you_mean("zzz", ["adamw"]) == ""
    assert did_you_mean("zzz", ["adamw"], paren=True) == ""


# ----------------------------------------------------------------------------- look_up


def test_look_up_mapping_returns_the_value():
    assert look_up("sgd", OPTIMIZERS, what="optimizer", where="optimizer.name") == "SGD factory"


def test_look_up_sequence_returns_the_item():
    assert look_up("bf16", ("off", "bf16", "fp16"), what="mode", where="amp") == "bf16"


def test_look_up_unknown_raises_config_error_with_what_where_fix():
    with pytest.raises(ConfigError) as e:
        look_up("lasr", OPTIMIZERS, what="optimizer", where="optimizer.name")
    assert e.value.what == "unknown optimizer 'lasr'"
    assert e.value.where == "optimizer.name"
    assert e.value.fix == "did you mean 'lars'? use one of adamw, sgd, lars"
    assert str(e.value) == "optimizer.name: unknown optimizer 'lasr' — did you mean 'lars'? use one of adamw, sgd, lars"


def test_look_up_several_suggestions_and_verb():
    with pytest.raises(ConfigError) as e:
        look_up("resnet5", ["resnet18", "resnet50", "vit_b16"], what="encoder", where="model.encoder", n=3,
                verb="choose one of")
    assert e.value.fix == "did you mean 'resnet50', 'resnet18'? choose one of resnet18, resnet50, vit_b16"


def test_look_up_no_hint_when_nothing_is_close():
    with pytest.raises(ConfigError) as e:
        look_up("zzz", ("gloo", "nccl"), what="distributed backend", where="runtime.backend")
    assert e.value.line() == "runtime.backend: unknown distributed backend 'zzz' — use one of gloo, nccl"


def test_look_up_custom_error_class():
    with pytest.raises(DataError) as e:
        look_up("octt", {"oct": 1, "ct": 2}, what="modality", where="synthesize(modalities=...)", error=DataError,
                verb="choose from")
    assert not isinstance(e.value, ConfigError)
    assert e.value.line() == "synthesize(modalities=...): unknown modality 'octt' — did you mean 'oct'? choose from oct, ct"


def test_look_up_normalize_matches_normalised_but_shows_the_value_as_given():
    def lower(s: str) -> str:
        return s.strip().lower()

    assert look_up(" SGD ", OPTIMIZERS, what="optimizer", where="o", normalize=lower) == "SGD factory"
    with pytest.raises(ConfigError) as e:
        look_up("LASR", OPTIMIZERS, what="optimizer", where="o", normalize=lower)
    assert e.value.what == "unknown optimizer 'LASR'"
    assert e.value.fix == "did you mean 'lars'? use one of adamw, sgd, lars"


def test_look_up_unhashable_value_is_an_unknown_name_not_a_type_error():
    with pytest.raises(ConfigError) as e:
        look_up(["sgd"], OPTIMIZERS, what="optimizer", where="o")
    assert e.value.what == "unknown optimizer ['sgd']"
    assert e.value.fix == "did you mean 'sgd'? use one of adamw, sgd, lars"  # str(['sgd']) is close to 'sgd'


def test_look_up_errors_are_medcl_errors():
    with pytest.raises(MedclError):
        look_up("x", ("a",), what="thing", where="")


# ----------------------------------------------------------------------------- the sites use it


def test_registry_messages_unchanged():
    from medcl.engine.amp import check_amp
    from medcl.engine.optim import build_optimizer
    from medcl.metrics.classification import check_task
    from medcl.readers import get_reader

    with pytest.raises(ConfigError) as e:
        check_task("multiclas")
    assert e.value.line() == "task: unknown task 'multiclas' — did you mean 'multiclass'? use one of binary, multiclass, multilabel, ordinal"
    with pytest.raises(ConfigError) as e:
        check_amp("BF-16")
    assert e.value.line() == "amp: unknown mixed-precision mode 'BF-16' — did you mean 'bf16'? use one of off, bf16, fp16"
    assert check_amp("bfloat16") == "bf16"
    with pytest.raises(ConfigError) as e:
        build_optimizer([], name="Lasr", lr=0.1)
    assert e.value.line() == "optimizer.name: unknown optimizer 'Lasr' — did you mean 'lars'? use one of adamw, sgd, lars"
    with pytest.raises(MedclError, match=re.escape("unknown format 'nifty' (did you mean 'nifti'?)")):
        get_reader("nifty")


def test_difflib_is_used_only_in_medcl_lookup():
    root = Path(medcl.__file__).parent
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if p.relative_to(root).parts[0] != "bench" and "difflib" in p.read_text(encoding="utf-8"))
    assert users == ["lookup.py"]
