"""Property-based fuzzing of the GGUF and safetensors readers: any byte string
either parses or raises BadFile; nothing else escapes and nothing hangs.

The number of inputs tried is printed with `pytest -s` (hypothesis statistics:
`pytest --hypothesis-show-statistics`)."""

import json
import struct

import numpy as np
import pytest
from gguf import GGUFWriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantkit.errors import BadFile, BadInput
from quantkit.formats.gguf_reader import GGUFFile

FUZZ = settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _seed_gguf(path):
    w = GGUFWriter(str(path), "gemma3")
    w.add_uint32("gemma3.block_count", 1)
    w.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0])
    w.add_tensor("token_embd.weight", np.arange(3 * 32, dtype=np.float32).reshape(3, 32))
    w.add_tensor("output_norm.weight", np.ones(32, np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path.read_bytes()


SEED = None


def _mutate(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for kind, pos, val in edits:
        if not b:
            break
        pos %= len(b)
        if kind == 0:
            b[pos] = val
        elif kind == 1:  # plant a large little-endian integer (counts, lengths, offsets)
            b[pos : pos + 8] = struct.pack("<Q", (val + 1) * 0x0101010101)
        elif kind == 2:
            del b[pos:]
        else:
            b[pos:pos] = bytes([val]) * 7
    return bytes(b)


edit = st.tuples(st.integers(0, 3), st.integers(0, 1 << 20), st.integers(0, 255))
tried = {"gguf": 0, "safetensors": 0}


@FUZZ
@given(edits=st.lists(edit, min_size=1, max_size=4))
def test_gguf_reader_never_crashes(tmp_path_factory, edits):
    global SEED
    d = tmp_path_factory.getbasetemp()
    if SEED is None:
        SEED = _seed_gguf(d / "seed.gguf")
    p = d / "fuzz.gguf"
    p.write_bytes(_mutate(SEED, edits))
    tried["gguf"] += 1
    try:
        f = GGUFFile(p)
    except BadFile:
        return
    for name in f.tensors:  # whatever parsed must be readable within the file
        assert f.raw(name).size == f.tensors[name].nbytes
    f.close()


@FUZZ
@given(edits=st.lists(edit, min_size=1, max_size=4))
def test_safetensors_source_never_crashes(tmp_path_factory, edits):
    import torch
    from safetensors.torch import save_file

    from quantkit.formats.hf_source import HFSource

    d = tmp_path_factory.getbasetemp() / "st"
    if not (d / "seed.safetensors").exists():
        d.mkdir(exist_ok=True)
        save_file({"model.embed_tokens.weight": torch.ones(8, 16), "model.norm.weight": torch.ones(16)}, d / "seed.safetensors")
        (d / "config.json").write_text(json.dumps({"model_type": "gemma3_text", "hidden_size": 16, "num_hidden_layers": 0,
                                                  "num_attention_heads": 1, "intermediate_size": 32, "vocab_size": 8}))
    (d / "model.safetensors").write_bytes(_mutate((d / "seed.safetensors").read_bytes(), edits))
    tried["safetensors"] += 1
    try:
        src = HFSource(d)
        for n in src.names():
            src.get(n)
    except BadInput:
        return


def test_report_fuzz_counts():
    print(f"\nfuzzed inputs: {tried}")
    assert tried["gguf"] >= 100 and tried["safetensors"] >= 100
