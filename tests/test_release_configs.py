"""The release configs against the releases' parameter counts (computed once from transformers modules,
independently of quantkit, and written out below)."""

import math

import pytest

from quantkit.models.configs import RELEASES, release_config
from quantkit.models.spec import spec_from_hf_config, tensor_shapes

TEXT_PARAMS = {"e2b": 4_628_569_379, "e4b": 7_463_013_418}  # exact
TEXT_PARAMS_APPROX = {"26b-a4b": 25.23e9, "31b": 30.70e9}  # 4 significant digits


@pytest.mark.parametrize("name", sorted(TEXT_PARAMS))
def test_edge_models_exact_parameter_count(name):
    spec = spec_from_hf_config(release_config(name))
    assert sum(math.prod(s) for s in tensor_shapes(spec).values()) == TEXT_PARAMS[name]


@pytest.mark.parametrize("name", sorted(TEXT_PARAMS_APPROX))
def test_large_models_parameter_count(name):
    spec = spec_from_hf_config(release_config(name))
    n = sum(math.prod(s) for s in tensor_shapes(spec).values())
    assert abs(n - TEXT_PARAMS_APPROX[name]) < 0.005e9


def test_e2b_kv_sharing_sources():
    spec = spec_from_hf_config(release_config("e2b"))
    # E2B sliding <- layer 13, full <- layer 14; double-wide MLP only in shared layers
    assert {spec.layers[i].kv_source for i in range(15, 35) if spec.layers[i].sliding} == {13}
    assert {spec.layers[i].kv_source for i in range(15, 35) if not spec.layers[i].sliding} == {14}
    assert [spec.layers[i].ffn_dim for i in (14, 15)] == [6144, 12288]


@pytest.mark.parametrize("name", sorted(RELEASES))
@pytest.mark.parametrize("n", [4, 7])
def test_cut_configs_keep_llamacpp_kv_store_rule(name, n):
    spec = spec_from_hf_config(release_config(name, n))
    own = [i for i, l in enumerate(spec.layers) if l.kv_source is None]
    if len(own) < n:  # llama.cpp: last non-shared layer full, the one before sliding
        assert not spec.layers[own[-1]].sliding and spec.layers[own[-2]].sliding
    full = spec_from_hf_config(release_config(name))
    assert {l.head_dim for l in spec.layers} == {l.head_dim for l in full.layers}
