"""The validating GGUF reader: a well-formed file reads back exactly (gguf-py's
writer is the oracle), and malformed headers give BadFile naming the problem."""

import struct

import numpy as np
import pytest
from gguf import GGUFWriter, GGMLQuantizationType

from quantkit.errors import BadFile
from quantkit.formats.gguf_reader import GGUFFile


@pytest.fixture
def small_gguf(tmp_path):
    path = tmp_path / "small.gguf"
    w = GGUFWriter(str(path), "gemma3")
    w.add_uint32("gemma3.block_count", 1)
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "ü"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0])
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((3, 32)).astype(np.float32))
    w.add_tensor("output_norm.weight", rng.standard_normal(32).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_reads_what_gguf_py_wrote(small_gguf):
    f = GGUFFile(small_gguf)
    assert f.metadata["gemma3.block_count"] == 1
    assert f.metadata["tokenizer.ggml.tokens"] == ["a", "b", "ü"]
    np.testing.assert_array_equal(f.metadata["tokenizer.ggml.scores"], [0.0, -1.0, -2.0])
    t = f.tensors["token_embd.weight"]
    assert t.shape == (3, 32) and t.ggml_type == GGMLQuantizationType.F32 and t.nbytes == 3 * 32 * 4
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(f.raw("token_embd.weight").view(np.float32).reshape(3, 32),
                                  rng.standard_normal((3, 32)).astype(np.float32))
    assert f.tensors["output_norm.weight"].ggml_type == GGMLQuantizationType.F16


def _corrupt(path, out, offset, data):
    b = bytearray(path.read_bytes())
    b[offset : offset + len(data)] = data
    out.write_bytes(bytes(b))
    return out


def test_bad_magic(small_gguf, tmp_path):
    with pytest.raises(BadFile, match="not a GGUF file"):
        GGUFFile(_corrupt(small_gguf, tmp_path / "x.gguf", 0, b"GGML"))


def test_bad_version(small_gguf, tmp_path):
    with pytest.raises(BadFile, match="version 7"):
        GGUFFile(_corrupt(small_gguf, tmp_path / "x.gguf", 4, struct.pack("<I", 7)))


def test_huge_counts(small_gguf, tmp_path):
    with pytest.raises(BadFile, match=r"1099511627776 tensors .* more than the file.s \d+ bytes can hold"):
        GGUFFile(_corrupt(small_gguf, tmp_path / "x.gguf", 8, struct.pack("<Q", 1 << 40)))


@pytest.mark.parametrize("cut", [3, 10, 20, 40, 100, 200, -8])
def test_truncated_anywhere(small_gguf, tmp_path, cut):
    data = small_gguf.read_bytes()
    out = tmp_path / "x.gguf"
    out.write_bytes(data[:cut])
    with pytest.raises(BadFile):
        GGUFFile(out)


def test_empty_file(tmp_path):
    (tmp_path / "e.gguf").write_bytes(b"")
    with pytest.raises(BadFile, match="truncated"):
        GGUFFile(tmp_path / "e.gguf")
