"""Text sources, tokenizers from tokenizer.json, and the CLI's error edge."""

import json
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from quantkit.calibration.text import calib_chunks, documents
from quantkit.calibration.tokenizer import TextTokenizer, from_tokenizer_json
from quantkit.errors import BadFile, BadOption


def _char_tokenizer() -> TextTokenizer:
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for c in "abcdefghijklmnopqrstuvwxyz .,\n":
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return TextTokenizer(tok, bos_id=2)


def test_jsonl_source(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "first doc"}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
    assert documents(f"{p}:text") == ["first doc", "second"]


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "ok"}) + "\n{broken\n")
    with pytest.raises(BadFile, match=r"d\.jsonl:2"):
        documents(f"{p}:text")
    with pytest.raises(BadFile, match="no field 'body'"):
        documents(f"{tmp_path / 'd'}.jsonl:body")


def test_missing_text_source():
    with pytest.raises(BadOption, match="no such file"):
        documents("/nonexistent/file.txt")


def test_calibration_chunks_are_deterministic(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    tok = _char_tokenizer()
    a = calib_chunks(tok, str(p), n_seqs=8, seq_len=32, seed=1)
    b = calib_chunks(tok, str(p), n_seqs=8, seq_len=32, seed=1)
    c = calib_chunks(tok, str(p), n_seqs=8, seq_len=32, seed=2)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert not np.array_equal(a.ids, c.ids)
    assert a.ids.shape == (8, 32) and (a.ids[:, 0] == 2).all()


def test_tokenizer_json_round_trip(tmp_path):
    tok = _char_tokenizer()
    tok.tok.save(str(tmp_path / "tokenizer.json"))
    loaded = from_tokenizer_json(tmp_path / "tokenizer.json")
    assert loaded.encode("abc") == [2] + tok.encode("abc", bos=False)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BadFile, match="bad.json"):
        from_tokenizer_json(tmp_path / "bad.json")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "quantkit", *args], capture_output=True, text=True)


def test_cli_bad_model_path_is_one_line_exit_2():
    r = _cli("eval", "/nonexistent/model.gguf")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "no such file" in r.stderr


def test_cli_not_a_gguf_exit_2(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"not a gguf at all, just bytes" * 4)
    r = _cli("eval", str(tmp_path / "m.gguf"))
    assert r.returncode == 2 and "not a GGUF file" in r.stderr and "Traceback" not in r.stderr


def test_cli_missing_preset_says_where_it_looked(tmp_path):
    r = subprocess.run([sys.executable, "-m", "quantkit", "eval", "e2b"], capture_output=True, text=True,
                       env={"HF_HUB_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 2
    assert str(tmp_path) in r.stderr and "--from" in r.stderr


def test_cli_version_and_help():
    assert _cli("--version").stdout.strip().startswith("quantkit, version")
    h = _cli("eval", "--help").stdout
    for opt in ("--text", "--tokens", "--ref", "--json", "--from", "--threads"):
        assert opt in h


@pytest.mark.parametrize("weights, tokens", [(10_000_000, 16384), (100_270_080, 16384), (512 * 2**20, 16384),
                                             (640 * 2**20, 12800), (1_835_532_288, 4608), (10**12, 4096)])
def test_default_calibration_size_by_model(monkeypatch, weights, tokens):
    """16,384 tokens up to 512 Mi linear weights per token, above that 128 x 512 tokens x 128 Mi weights / the
    model's (whole 512-token sequences), never below 4,096; E2B (1,835,532,288) gets 9 sequences."""
    from quantkit import options

    monkeypatch.setattr(options, "linear_weights_per_token", lambda source: weights)
    assert options.default_calib_tokens(object()) == tokens


def test_linear_weights_per_token_counts_attention_and_mlp(tmp_path):
    """tiny_models.gemma4_dense: every q/k/v/o and gate/up/down weight and nothing else, counted by hand."""
    import tiny_models
    import tiny_tokenizer
    from quantkit.options import linear_weights_per_token
    from quantkit.sources import open_source

    model, _ = tiny_models.gemma4_dense(0)
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save(tmp_path)
    H, I = 64, 128
    mlp = 3 * H * I
    sliding = H * (4 * 32 + 4 * 32 + 4 * 32) + 4 * 32 * H + mlp  # q, k, v (4 heads x 32), o
    full = H * (4 * 64 + 2 * 64) + 4 * 64 * H + mlp  # q (4 x 64), k (2 x 64), no v (K = V), o
    assert linear_weights_per_token(open_source(str(tmp_path))) == 2 * sliding + 2 * full
