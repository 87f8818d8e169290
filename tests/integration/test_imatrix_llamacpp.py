"""imatrix files both ways, against llama.cpp's own `llama-imatrix` and `llama-quantize` (built from the
llama-cpp-python 0.3.36 source package, tests/integration/llamacpp_tools.py) on the real Gemma 3 270M F32 base.

* `llama-imatrix` over the first chunks of the built-in c4 text -> quantkit's read_imatrix: one entry per `blk.*`
  linear, every token counted, and E[x^2] equal to quantkit's own capture over the very same tokens.
* quantkit's capture -> write_imatrix -> `llama-quantize --imatrix` takes it, and its bytes are quantkit's `imatrix`
  method's with that file.
* With llama-imatrix's file, quantkit's `imatrix` method writes the bytes of `llama-quantize --imatrix --pure` for
  Q4_K, Q3_K, Q2_K, Q6_K and IQ4_XS, on every `blk.*` weight: attn_output and ffn_down (rows of 1024 / 2048
  columns) in the type itself, the 640-column ones in llama.cpp's fallback type, which must be the registry's.

Run: .venv/bin/pytest -m integration tests/integration/test_imatrix_llamacpp.py -s
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from quantkit.calibration.imatrix import from_stats, read_imatrix, write_imatrix
from quantkit.calibration.text import documents
from quantkit.formats import names
from quantkit.formats.gguf_reader import GGUFFile
from quantkit.formats.gguf_source import GGUFSource
from quantkit.gptq import quantize_tensor
from quantkit.kernels import registry

from .llamacpp_tools import llama_imatrix, llama_quantize_cli

pytestmark = pytest.mark.integration

TYPES = ["Q4_K", "Q3_K", "Q2_K", "Q6_K", "IQ4_XS"]
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@pytest.fixture(scope="module")
def base(f32_270m):
    return GGUFSource(f32_270m)


@pytest.fixture(scope="module")
def c4_text(tmp_path_factory):
    """The built-in c4 text as one file, joined the way quantkit's tokenize_source joins it."""
    p = tmp_path_factory.mktemp("c4") / "c4.txt"
    p.write_text("\n\n".join(documents("c4")), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def llama_imat(f32_270m, c4_text, c4_capture_270m, tmp_path_factory):
    """llama-imatrix over the tokens of quantkit's capture (conftest c4_capture_270m): the first chunks x 512 of c4."""
    return llama_imatrix(f32_270m, c4_text, tmp_path_factory.mktemp("imat") / "llama-imatrix.gguf",
                         chunks=c4_capture_270m.chunks, ctx=c4_capture_270m.ctx)


@pytest.fixture(scope="module")
def quantkit_stats(c4_capture_270m):
    return c4_capture_270m.stats


@pytest.fixture(scope="module")
def weights(f32_270m):
    r = GGUFReader(f32_270m)
    return {t.name: np.asarray(t.data) for t in r.tensors}


def test_quantkit_reads_llama_imatrix(llama_imat, c4_text, base, quantkit_stats, c4_capture_270m):
    im = read_imatrix(llama_imat)
    n_layers = len(base.spec.layers)
    expected = {f"blk.{i}.{k}.weight" for i in range(n_layers) for k in LINEARS}
    assert set(im.sums) == expected  # blk.* only: no token_embd (a lookup), no output (tied, no --process-output)
    chunks, ctx = c4_capture_270m.chunks, c4_capture_270m.ctx
    assert im.chunk_count == chunks and im.chunk_size == ctx and im.datasets == [str(c4_text)]
    assert all(int(c[0]) == chunks * ctx for c in im.counts.values())
    theirs = im.importance()
    worst = {}
    for g in sorted(expected):
        canon = names.from_gguf(g)
        ours = quantkit_stats[canon].mean_x2()
        assert theirs[canon].shape == ours.shape, g
        # columns the pre-FFN norm's (1 + w) zeroes out are zero in both
        np.testing.assert_array_equal(theirs[canon] == 0, ours == 0, err_msg=g)
        seen = ours > 0
        worst[g] = float(np.max(np.abs(theirs[canon][seen] - ours[seen]) / ours[seen]))
    # llama.cpp's forward (F16 KV cache) and quantkit's float32 one on the same tokens: about 3e-3 at worst
    print(f"\nE[x^2] llama-imatrix vs quantkit capture: max relative difference {max(worst.values()):.2e} "
          f"({max(worst, key=worst.get)}), median {np.median(list(worst.values())):.2e}")
    assert max(worst.values()) < 1e-2, sorted(worst.items(), key=lambda kv: -kv[1])[:5]


def test_llama_quantize_takes_quantkit_imatrix(quantkit_stats, c4_capture_270m, f32_270m, weights, tmp_path):
    path = write_imatrix(tmp_path / "quantkit.gguf",
                         from_stats(quantkit_stats, datasets=["c4"], chunk_size=c4_capture_270m.ctx))
    out = llama_quantize_cli(f32_270m, tmp_path / "q4k.gguf", "Q4_K", imatrix=path, pure=True,
                             token_embedding_type="q8_0")
    stats = read_imatrix(path).stats()
    tensors = _tensors(out)
    for g in ("blk.0.ffn_down.weight", "blk.9.attn_output.weight", "blk.17.ffn_up.weight"):
        kind, data = tensors[g]
        want = registry.fallback_type("Q4_K", weights[g].shape[1])
        assert kind == want
        ours = quantize_tensor("imatrix", weights[g], want, stats[names.from_gguf(g)]).data
        np.testing.assert_array_equal(ours.reshape(-1), data, err_msg=g)
    # the imatrix was used: blk.0.ffn_down was Q6_K in the Q4_K_M source, so Q4_K's grid is not its own and the
    # weighting moves the scales (attn_output, Q4_K in the source, comes back on its own grid with or without)
    g = "blk.0.ffn_down.weight"
    assert not np.array_equal(quantize_tensor("rtn", weights[g], "Q4_K").data.reshape(-1), tensors[g][1])


@pytest.mark.parametrize("type_name", TYPES)
def test_imatrix_method_matches_llama_quantize(type_name, llama_imat, f32_270m, weights, tmp_path):
    out = llama_quantize_cli(f32_270m, tmp_path / f"{type_name}.gguf", type_name, imatrix=llama_imat, pure=True,
                             token_embedding_type="q8_0")
    stats = read_imatrix(llama_imat).stats()
    same: dict[str, list[int]] = {}  # type written -> [identical, compared]
    differ = []
    for name, (kind, data) in _tensors(out).items():
        canon = names.from_gguf(name)
        if canon not in stats:
            continue
        w = weights[name]
        want = registry.fallback_type(type_name, w.shape[1])
        assert kind == want, f"{name}: llama.cpp wrote {kind}, registry says {want}"
        ok = np.array_equal(quantize_tensor("imatrix", w, want, stats[canon]).data.reshape(-1), data)
        tally = same.setdefault(want, [0, 0])
        tally[0] += ok
        tally[1] += 1
        if not ok:
            differ.append(name)
    print(f"\n{type_name}: byte-identical to llama-quantize --imatrix --pure: "
          + ", ".join(f"{k} {a}/{n} tensors" for k, (a, n) in same.items()))
    assert sum(n for _, n in same.values()) == 18 * len(LINEARS)
    assert type_name in same  # attn_output / ffn_down rows hold whole 256-blocks
    assert not differ, f"{type_name}: {len(differ)} tensors differ, e.g. {differ[:5]}"


def test_imatrix_command_feeds_llama_quantize(f32_270m, weights, tmp_path):
    """`quantkit imatrix` (the command, on the F32 base) writes a file `llama-quantize --imatrix` takes: IQ2_XXS,
    which llama.cpp refuses to make without one, comes out as quantkit's importance-weighted encoder makes it from
    the same file."""
    import subprocess
    import sys

    path = tmp_path / "cmd.gguf"
    r = subprocess.run([sys.executable, "-m", "quantkit", "imatrix", str(f32_270m), "--calib-tokens", "1024",
                        "--out", str(path), "--threads", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # 126 decoder matrices and the tied token_embd's lookup importance, which llama-imatrix cannot measure
    assert r.stdout.startswith(f"wrote {path}: 127 matrices, 2 chunks of 512 tokens of c4"), r.stdout
    out = llama_quantize_cli(f32_270m, tmp_path / "iq2.gguf", "IQ2_XXS", imatrix=path, pure=True,
                             token_embedding_type="q8_0")
    stats = read_imatrix(path).stats()
    g = "blk.3.ffn_down.weight"  # 2048-wide rows: IQ2_XXS itself (the 640-wide ones fall back to IQ4_NL)
    kind, data = _tensors(out)[g]
    assert kind == "IQ2_XXS"
    ours = quantize_tensor("imatrix", weights[g], "IQ2_XXS", stats[names.from_gguf(g)]).data
    np.testing.assert_array_equal(ours.reshape(-1), data, err_msg=g)


def test_compress_with_quantkits_imatrix_file_is_compress_without_it(f32_270m, tmp_path):
    """`quantkit imatrix` then `compress --method imatrix --imatrix FILE` builds exactly what `compress --method
    imatrix` builds from its own capture of the same tokens: the file carries the tables' importance too."""
    import subprocess
    import sys

    path = tmp_path / "q.imatrix.gguf"
    r = subprocess.run([sys.executable, "-m", "quantkit", "imatrix", str(f32_270m), "--calib-tokens", "1024",
                        "--out", str(path), "--threads", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with_file = _compress(f32_270m, "--like", "Q4_K_M", "--method", "imatrix", "--imatrix", path, tmp_path / "a")
    without = _compress(f32_270m, "--like", "Q4_K_M", "--method", "imatrix", "--calib-tokens", "1024", tmp_path / "b")
    n = _same_tensors(with_file, without)
    print(f"\n--like Q4_K_M --method imatrix: with `quantkit imatrix`'s file and without it, {n} tensors "
          "byte-identical")


def _compress(*args: object) -> Path:
    """`quantkit compress ARGS --tokens 0 --out DIR` in a child process; the .gguf it wrote."""
    import subprocess
    import sys

    out = Path(str(args[-1]))
    r = subprocess.run([sys.executable, "-m", "quantkit", "compress", *map(str, args[:-1]), "--tokens", "0",
                        "--threads", "2", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (path,) = out.glob("*.gguf")
    return path


def _same_tensors(ours: Path, theirs: Path) -> int:
    ta, tb = _tensors(ours), _tensors(theirs)
    assert list(ta) == list(tb)
    for name, (kind, data) in ta.items():
        assert kind == tb[name][0], (name, kind, tb[name][0])
        np.testing.assert_array_equal(data, tb[name][1], err_msg=name)
    return len(ta)


def _tensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (ggml type, bytes) of every tensor of a GGUF file, in file order. Read with quantkit's GGUFFile (whose
    reading the fast tier checks against gguf-py's): gguf-py's GGUFReader parses the 270M's 262,144-entry tokenizer
    arrays in Python, about 10 s a file."""
    f = GGUFFile(path)
    try:
        return {name: (t.ggml_type.name, np.array(f.raw(name))) for name, t in f.tensors.items()}
    finally:
        f.close()


@pytest.mark.parametrize("preset", ["Q4_K_M", "Q2_K", "IQ4_XS"])
def test_compress_with_llama_imatrix_is_llama_quantize(preset, llama_imat, f32_270m, tmp_path):
    """`quantkit compress --like PRESET --method imatrix --imatrix FILE` with llama-imatrix's file: every tensor
    byte-identical to `llama-quantize --imatrix FILE` at PRESET, from the same F32 base."""
    ours = _compress(f32_270m, "--like", preset, "--method", "imatrix", "--imatrix", llama_imat, tmp_path / "ours")
    theirs = llama_quantize_cli(f32_270m, tmp_path / "theirs.gguf", preset, imatrix=llama_imat)
    print(f"\n{preset} --imatrix llama-imatrix.gguf: {_same_tensors(ours, theirs)} tensors byte-identical")


def test_tensor_type_override_is_llama_quantize(f32_270m, tmp_path):
    """`--like Q2_K --tensor-type ffn_down=Q6_K --method rtn`: llama-quantize's types and bytes with the same flag."""
    ours = _compress(f32_270m, "--like", "Q2_K", "--tensor-type", "ffn_down=Q6_K", "--method", "rtn",
                     tmp_path / "ours")
    theirs = llama_quantize_cli(f32_270m, tmp_path / "theirs.gguf", "Q2_K", tensor_types=["ffn_down=q6_k"])
    assert GGUFFile(ours).tensors["blk.0.ffn_down.weight"].ggml_type.name == "Q6_K"
    print(f"\nQ2_K --tensor-type ffn_down=Q6_K: {_same_tensors(ours, theirs)} tensors byte-identical")
