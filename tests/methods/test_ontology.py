"""Concept graphs for supcon-graph: the shipped cardiac graph, a user's own file, and the errors that name the fault."""

from __future__ import annotations

import json

import pytest
import torch

from medcl.errors import ConfigError
from medcl.methods import build_method
from medcl.methods.ontology import concept_similarity, load_concept_graph, resolve_classes
from medcl.networks import build_encoder


def test_shipped_cardiac_graph_resolves_the_demo_classes_and_common_codes():
    g = load_concept_graph("ecg_scp")
    assert resolve_classes(g, ["NORM", "AF", "BBB", "TACHY"]) == ["NORM", "AFIB", "BBB", "STACH"]
    assert resolve_classes(g, ["crbbb", "1AVB", "LVH"]) == ["RBBB", "1AVB", "LVH"]  # alias, case-insensitive


def test_similarities_are_products_of_is_a_weights_along_the_shortest_path():
    g = load_concept_graph("ecg_scp")  # is_a_weight 0.5
    s = concept_similarity(g, ["RBBB", "LBBB", "1AVB", "AFIB", "AFLT", "STACH", "NORM"])
    # by hand: RBBB-BBB-LBBB (2 edges), RBBB-BBB-CD-AVB-1AVB (4), AFIB-SVARR-AFLT (2),
    # AFIB-SVARR-RHYTHM-RATE-STACH (4); conduction vs rhythm and anything vs NORM: no path
    expected = {("RBBB", "LBBB"): 0.25, ("RBBB", "1AVB"): 0.0625, ("AFIB", "AFLT"): 0.25,
                ("AFIB", "STACH"): 0.0625, ("RBBB", "AFIB"): 0.0, ("NORM", "AFIB"): 0.0, ("NORM", "RBBB"): 0.0}
    names = ["RBBB", "LBBB", "1AVB", "AFIB", "AFLT", "STACH", "NORM"]
    for (a, b), v in expected.items():
        i, j = names.index(a), names.index(b)
        assert s[i, j].item() == pytest.approx(v) and s[j, i].item() == pytest.approx(v)
    assert torch.equal(torch.diagonal(s), torch.ones(len(names)))


def test_a_users_own_graph_file_is_used(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"name": "mine", "is_a_weight": 0.8, "concepts": [
        {"code": "ARR"}, {"code": "A", "is_a": "ARR"}, {"code": "B", "is_a": "ARR", "aliases": ["bee"]}]}))
    s = concept_similarity(load_concept_graph(str(f)), ["A", "bee"])
    assert s[0, 1].item() == pytest.approx(0.64)
    enc = build_encoder("resnet1d", in_channels=12, spatial_dims=1)
    m = build_method("supcon-graph", enc, classes=["A", "bee"], similarity=str(f))
    assert torch.allclose(m.criterion.similarity, s) and m.graph_name == "mine"


def test_the_shipped_preset_gives_the_ecg_demo_its_graph():
    enc = build_encoder("resnet1d", in_channels=12, spatial_dims=1)
    m = build_method("supcon-graph", enc, classes=["NORM", "AF", "BBB", "TACHY"], similarity="ecg_scp")
    assert m.criterion.similarity[1, 3].item() == pytest.approx(0.0625)  # AF ~ TACHY (both rhythm)
    assert m.criterion.similarity[0, 1:].abs().sum().item() == 0.0  # NORM unlike every abnormality


@pytest.mark.parametrize("graph, match", [
    ({"concepts": [{"code": "A"}, {"code": "A"}]}, "appears twice"),
    ({"concepts": [{"code": "A", "is_a": "Z"}]}, "not a concept of the graph"),
    ({"concepts": [{"code": "A", "parent": "B"}]}, "unknown key 'parent'"),
    ({"concepts": [{"code": "A"}], "is_a_weight": 2}, "outside"),
    ({"concepts": []}, "non-empty 'concepts'"),
])
def test_malformed_graphs_are_refused_naming_the_concept(tmp_path, graph, match):
    f = tmp_path / "g.json"
    f.write_text(json.dumps(graph))
    with pytest.raises(ConfigError, match=match):
        load_concept_graph(str(f))


def test_unknown_classes_graphs_and_files_are_named():
    g = load_concept_graph("ecg_scp")
    with pytest.raises(ConfigError, match=r"no concept for class\(es\) \['RBB'\]") as info:
        resolve_classes(g, ["NORM", "RBB"])
    assert "RBBB" in info.value.fix
    with pytest.raises(ConfigError, match="no shipped concept graph 'ecg_spc'") as info:
        load_concept_graph("ecg_spc")
    assert "ecg_scp" in info.value.fix
    with pytest.raises(ConfigError, match="does not exist"):
        load_concept_graph("/nonexistent/graph.yaml")
