from pathlib import Path

import pytest

from medcl.config import flatten, load_config, pipeline_key
from medcl.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(p: Path, text: str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_include_merge_and_own_keys_win(tmp_path):
    write(tmp_path / "configs" / "a.yaml", "pretrain: {epochs: 3, lr: 0.5}\nmodel: {encoder: resnet50}\n")
    write(tmp_path / "configs" / "b.yaml", "include: [a.yaml]\npretrain: {lr: 0.1}\n")
    p = write(tmp_path / "pipelines" / "p.yaml", "include: [../configs/b.yaml]\nname: p\npretrain: {epochs: 7}\n")
    cfg = load_config(p)
    assert cfg.pretrain.epochs == 7  # own key wins
    assert cfg.pretrain.lr == 0.1  # later include wins over nested include
    assert cfg.model.encoder == "resnet50"


def test_an_empty_mapping_clears_the_included_one(tmp_path):
    write(tmp_path / "base.yaml", "model: {encoder: resnet18, options: {output_stride: 16}}\n")
    p = write(tmp_path / "p.yaml", "include: [base.yaml]\nname: p\nmodel: {encoder: vit_tiny, options: {}}\n")
    assert load_config(p).model.options == {}
    q = write(tmp_path / "q.yaml", "include: [base.yaml]\nname: q\nmodel: {options: {zero_init_residual: true}}\n")
    assert load_config(q).model.options == {"output_stride": 16, "zero_init_residual": True}  # non-empty: merged


def test_unknown_key_did_you_mean(tmp_path):
    p = write(tmp_path / "p.yaml", "name: p\ndata: {on_eror: skip}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'data.on_eror' — did you mean 'data.on_error'"):
        load_config(p)


def test_wrong_type_names_key_value_and_type(tmp_path):
    p = write(tmp_path / "p.yaml", "name: p\npretrain: {epochs: ten}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert "pretrain.epochs = 'ten'" in msg and "integer" in msg


def test_bad_choice_did_you_mean(tmp_path):
    p = write(tmp_path / "p.yaml", "name: p\npretrain: {optimizer: adamx}\n")
    with pytest.raises(ConfigError, match=r"pretrain.optimizer = 'adamx' is not a valid choice — did you mean 'adamw'"):
        load_config(p)


def test_override_type_checked_and_unknown(tmp_path):
    p = write(tmp_path / "p.yaml", "name: p\n")
    cfg = load_config(p, ["pretrain.epochs=5", "classify.label_fractions=[0.1, 1.0]", "data.on_error=skip"])
    assert cfg.pretrain.epochs == 5 and cfg.classify.label_fractions == [0.1, 1.0]
    assert cfg.data.on_error == "skip"
    with pytest.raises(ConfigError, match=r"--set pretrain.epochz=3: unknown key 'pretrain.epochz' — did you mean"):
        load_config(p, ["pretrain.epochz=3"])
    with pytest.raises(ConfigError, match=r"pretrain.lr = 'fast'"):
        load_config(p, ["pretrain.lr=fast"])
    with pytest.raises(ConfigError, match="has no '='"):
        load_config(p, ["pretrain.lr"])


def test_include_cycle_and_missing(tmp_path):
    write(tmp_path / "a.yaml", "include: [b.yaml]\n")
    write(tmp_path / "b.yaml", "include: [a.yaml]\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(tmp_path / "a.yaml")
    p = write(tmp_path / "c.yaml", "include: [nope.yaml]\n")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(p)


def test_invalid_yaml_names_line(tmp_path):
    p = write(tmp_path / "p.yaml", "name: p\ndata: {manifest: [\n")
    with pytest.raises(ConfigError, match=r"p.yaml:\d+:\d+: invalid YAML"):
        load_config(p)


def test_relative_paths_resolved_against_pipeline_file(tmp_path):
    p = write(tmp_path / "pipes" / "p.yaml", "name: p\ndata: {manifest: ../data/m.csv}\n")
    cfg = load_config(p)
    assert cfg.data.manifest == str((tmp_path / "data" / "m.csv").resolve())


def test_stage_order_and_key_stability(tmp_path):
    p = write(tmp_path / "p.yaml", "name: p\nstages: [calibrate, pretrain, classify]\n")
    cfg = load_config(p)
    assert cfg.stages == ["pretrain", "classify", "calibrate"]
    k1 = pipeline_key(cfg)
    assert k1 == pipeline_key(load_config(p, ["runtime.progress=false"]))  # non-semantic
    assert k1 != pipeline_key(load_config(p, ["pretrain.epochs=2"]))


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": "[1, 2]", "d": None}


def test_transforms_section_is_open(tmp_path):
    p = write(tmp_path / "p.yaml", "name: p\ntransforms: {preset: oct, spatial_size: [64, 64]}\n")
    cfg = load_config(p)
    assert cfg.transforms.model_extra == {"spatial_size": [64, 64]}


@pytest.mark.parametrize("path", sorted((REPO / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_loads(path):
    cfg = load_config(path)
    assert cfg.stages, path


def test_an_epochs_override_replaces_a_step_budget_of_the_yaml(tmp_path):
    """The last word on a budget wins: the YAML's steps give way to --set epochs (unless steps is set too)."""
    from medcl.config import load_config

    p = tmp_path / "p.yaml"
    p.write_text("name: p\npretrain: {steps: 240, epochs: 100}\nclassify: {finetune: {steps: 80}}\n")
    assert load_config(p).pretrain.steps == 240
    cfg = load_config(p, ["pretrain.epochs=3", "classify.finetune.epochs=2"])
    assert (cfg.pretrain.epochs, cfg.pretrain.steps) == (3, None)
    assert (cfg.classify.finetune.epochs, cfg.classify.finetune.steps) == (2, None)
    both = load_config(p, ["pretrain.epochs=3", "pretrain.steps=7"])
    assert (both.pretrain.epochs, both.pretrain.steps) == (3, 7)
