"""`quantkit inspect` on GGUF and safetensors builds."""

import json

import numpy as np
from click.testing import CliRunner
from gguf import GGMLQuantizationType, GGUFWriter

import tiny_models
from quantkit.cli import cli
from quantkit.formats.names import group_of
from quantkit.inspect import inspect_path


def test_groups():
    assert group_of("embed_tokens.weight") == "embeddings"
    assert group_of("embed_tokens_per_layer.weight") == "ple"
    assert group_of("layers.3.per_layer_input_gate.weight") == "ple"
    assert group_of("layers.0.self_attn.q_proj.weight") == "attention"
    assert group_of("layers.0.self_attn.q_norm.weight") == "norms"
    assert group_of("layers.0.mlp.down_proj.weight_packed") == "mlp"
    assert group_of("layers.0.experts.gate_up_proj") == "experts"
    assert group_of("layers.0.layer_scalar") == "norms"
    assert group_of("vision_tower.encoder.x.weight") == "towers"


def test_gguf_inventory_and_json(tmp_path):
    path = tmp_path / "m.gguf"
    w = GGUFWriter(str(path), "gemma3")
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(100)])
    w.add_tensor("token_embd.weight", np.zeros((4, 64), np.float32))
    from gguf.quants import quantize

    q = quantize(np.ones((8, 64), np.float32), GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", q, raw_dtype=GGMLQuantizationType.Q8_0)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    inv = inspect_path(path)
    t = {r.name: r for r in inv.tensors}
    assert t["blk.0.attn_q.weight"].type == "Q8_0" and t["blk.0.attn_q.weight"].shape == [8, 64]
    assert t["blk.0.attn_q.weight"].nbytes == 8 * 2 * 34  # 2 blocks of 32 per row, 34 bytes each
    assert inv.totals()["attention"]["bpw"] == 8.5
    assert inv.metadata["tokenizer.ggml.tokens"] == "[100 items]"
    res = CliRunner().invoke(cli, ["inspect", str(path), "--json"])
    assert res.exit_code == 0
    d = json.loads(res.output)
    assert d["totals"]["embeddings"]["bpw"] == 32.0 and d["n_params"] == 4 * 64 + 8 * 64


def test_safetensors_inventory(tmp_path):
    model, _ = tiny_models.gemma4_e()
    model.save_pretrained(tmp_path)
    inv = inspect_path(tmp_path)
    assert inv.format == "safetensors"
    assert {"embeddings", "ple", "attention", "mlp", "norms"} <= set(inv.totals())
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "model.safetensors")
    assert inv.n_params == sum(t.numel() for t in saved.values())
    assert sum(r.nbytes for r in inv.tensors) == sum(t.numel() * t.element_size() for t in saved.values())


def test_damaged_directory_is_one_line_error(tmp_path):
    """A broken config.json or a damaged safetensors header: one `error:` line naming the file, exit 2."""
    from safetensors.numpy import save_file

    from quantkit.errors import BadFile

    save_file({"model.embed_tokens.weight": np.zeros((8, 4), np.float32)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{not json")
    r = CliRunner().invoke(cli, ["inspect", str(tmp_path)], standalone_mode=False, catch_exceptions=True)
    assert isinstance(r.exception, BadFile) and str(r.exception).startswith(f"{tmp_path / 'config.json'}:1: invalid JSON")
    (tmp_path / "config.json").write_text("{}")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:8] + b"{garbage" + data[16:])
    r = CliRunner().invoke(cli, ["inspect", str(tmp_path)], standalone_mode=False, catch_exceptions=True)
    assert isinstance(r.exception, BadFile)
    assert str(r.exception).startswith(f"{tmp_path / 'model.safetensors'}: not a readable safetensors file")
