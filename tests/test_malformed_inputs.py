"""Malformed inputs through the real command line: every case below is made by the
test itself from a good tiny checkpoint (a Gemma 4 dense safetensors directory, the
same split into shards, and the Q8_0 GGUF quantkit builds from it), damaged in one
place, and given to `quantkit compress`. Each must end with the documented exit
status, one line on stderr naming the problem (file, tensor or key), no traceback,
and no .gguf or temporary file in the output directory.

Every case runs in-process, through `quantkit.cli.main()` with `sys.argv` patched,
so the table costs one Python and torch start-up instead of one per case. The cases
marked `e2e=True` (one of each kind of input) also run as a real `quantkit`
subprocess, to keep the whole path covered: the process's exit status, and nothing
else (no traceback, no stray warning) reaching its stderr."""

from __future__ import annotations

import json
import re
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import tiny_models
import tiny_tokenizer

QUANTKIT = Path(sys.executable).with_name("quantkit")
FLAGS = ["--type", "Q8_0", "--method", "rtn", "--tokens", "0"]


# -- the good inputs -------------------------------------------------------------------

@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    from quantkit.compress import CompressOptions, run
    from quantkit.formats.hf_source import HFSource

    root = tmp_path_factory.mktemp("bases")
    model, _ = tiny_models.gemma4_dense()
    hf = root / "hf"
    model.save_pretrained(hf)
    tiny_tokenizer.save(hf)
    sharded = root / "sharded"
    model.save_pretrained(sharded, max_shard_size="400KB")
    tiny_tokenizer.save(sharded)
    assert len(list(sharded.glob("model-0000?-of-0000?.safetensors"))) >= 3
    built = run(HFSource(hf), root / "build", CompressOptions(type_name="Q8_0", method="rtn", eval_tokens=0, progress=False))
    gguf = root / "in.gguf"
    shutil.copy(built.path, gguf)
    return {"hf": hf, "sharded": sharded, "gguf": gguf}


# -- reading and editing the layouts -----------------------------------------------------

_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_layout(b: bytes) -> dict:
    """Byte offsets of every header field of a GGUF file (an independent walk of docs/gguf.md)."""
    pos = 24
    n_tensors, n_kv = struct.unpack_from("<QQ", b, 8)
    kv = {}
    for _ in range(n_kv):
        klen = struct.unpack_from("<Q", b, pos)[0]
        key = b[pos + 8 : pos + 8 + klen].decode()
        f = {"key_len": pos, "key": pos + 8, "vtype": pos + 8 + klen, "value": pos + 12 + klen}
        vtype = struct.unpack_from("<I", b, f["vtype"])[0]
        pos = f["value"]
        if vtype == 8:
            pos += 8 + struct.unpack_from("<Q", b, pos)[0]
        elif vtype == 9:
            itype, count = struct.unpack_from("<IQ", b, pos)
            pos += 12
            for _ in range(count):
                pos += 8 + struct.unpack_from("<Q", b, pos)[0] if itype == 8 else _GGUF_SCALAR[itype]
        else:
            pos += _GGUF_SCALAR[vtype]
        kv[key] = f
    tensors = {}
    for _ in range(n_tensors):
        nlen = struct.unpack_from("<Q", b, pos)[0]
        name = b[pos + 8 : pos + 8 + nlen].decode()
        f = {"name_len": pos, "name": pos + 8, "n_dims": pos + 8 + nlen, "ne": pos + 12 + nlen}
        n_dims = struct.unpack_from("<I", b, f["n_dims"])[0]
        f["type"] = f["ne"] + 8 * n_dims
        f["offset"] = f["type"] + 4
        pos = f["offset"] + 8
        tensors[name] = f
    return {"kv": kv, "tensors": tensors, "data": -(-pos // 32) * 32}


def edit_gguf(path: Path, fn) -> None:
    b = bytearray(path.read_bytes())
    fn(b, gguf_layout(bytes(b)))
    path.write_bytes(bytes(b))


def truncate_gguf(where):
    """Cut the file one byte into the field `where(layout)` points at."""
    def make(path):
        b = path.read_bytes()
        path.write_bytes(b[: where(gguf_layout(b)) + 1] if b else b)
    return make


def put(b: bytearray, pos: int, fmt: str, *v) -> None:
    struct.pack_into(fmt, b, pos, *v)


def st_header(path: Path) -> tuple[dict, bytes]:
    b = path.read_bytes()
    n = struct.unpack_from("<Q", b)[0]
    return json.loads(b[8 : 8 + n]), b[8 + n :]


def st_write(path: Path, header: dict, data: bytes) -> None:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def edit_st(fn):
    """Edit the header dict and the data bytes of model.safetensors in place."""
    def make(d):
        header, data = st_header(d / "model.safetensors")
        data = bytearray(data)
        fn(header, data)
        st_write(d / "model.safetensors", header, bytes(data))
    return make


def edit_config(fn):
    def make(d):
        cfg = json.loads((d / "config.json").read_text())
        fn(cfg)
        (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return make


def poke_value(name: str, value: float):
    """Write `value` into element 5 of an F32 tensor of a safetensors file."""
    def fn(h, data):
        start = h[name]["data_offsets"][0]
        struct.pack_into("<f", data, start + 4 * 5, value)
    return edit_st(fn)


def set_gguf_string(key: str, new: str):
    def fn(b, lay):
        pos = lay["kv"][key]["value"]
        n = struct.unpack_from("<Q", b, pos)[0]
        assert len(new) == n
        b[pos + 8 : pos + 8 + n] = new.encode()
    return lambda p: edit_gguf(p, fn)


# -- the cases -------------------------------------------------------------------------

CASES = []  # every case, run in-process
E2E_CASES = []  # the few also run as a real `quantkit` subprocess
T0, T1 = "rope_freqs.weight", "blk.0.attn_q.weight"  # the first tensor in the data section, and a weight
ARCH = "general.architecture"  # the GGUF's first metadata key


OPENERS = []  # every case through the other commands that open a model: (command, base, make, pattern, status)


def case(name: str, base: str, pattern: str, status: int = 2, e2e: bool = False,
         also: tuple[str, ...] = ("eval", "imatrix"), inspect: bool = True):
    """Register `make(path) -> None | (model_arg, out_dir)`; `pattern` must match the one stderr line.
    `e2e=True` also runs the case as a subprocess. `also` names the other commands the case is given to, with the
    same expected line; `inspect=True` adds `quantkit inspect` (for damage to what inspect reads: headers, index,
    config syntax; it shows files whose contents a model could not use)."""
    def register(make):
        CASES.append(pytest.param(base, make, pattern, status, id=name))
        if e2e:
            E2E_CASES.append(CASES[-1])
        for command in (*also, *(("inspect",) if inspect else ())):
            OPENERS.append(pytest.param(command, base, make, pattern, status, id=f"{command}-{name}"))
        return make
    return register


def trunc(name, what, where):
    case(f"gguf-truncated-{name}", "gguf", rf"in\.gguf: truncated at byte \d+ while reading {what}")(truncate_gguf(where))


def trunc_in_metadata(name, where):
    """Cut inside the metadata, the file is too short for the counts its header gives."""
    pattern = r"in\.gguf: header claims 57 tensors and 45 metadata keys, more than the file's \d+ bytes can hold \(truncated"
    case(f"gguf-truncated-{name}", "gguf", pattern)(truncate_gguf(where))


trunc("magic", "magic", lambda lay: 1)
trunc("version", "version", lambda lay: 4)
trunc("tensor-count", "tensor count", lambda lay: 8)
trunc("kv-count", "metadata count", lambda lay: 16)
trunc_in_metadata("key-length", lambda lay: lay["kv"][ARCH]["key_len"])
trunc_in_metadata("key", lambda lay: lay["kv"][ARCH]["key"])
trunc_in_metadata("value-type", lambda lay: lay["kv"][ARCH]["vtype"])
trunc_in_metadata("value", lambda lay: lay["kv"][ARCH]["value"])
trunc_in_metadata("string-array", lambda lay: lay["kv"]["tokenizer.ggml.tokens"]["value"] + 40)
trunc("tensor-name-length", "length of tensor name", lambda lay: lay["tensors"][T1]["name_len"])
trunc("tensor-name", "tensor name", lambda lay: lay["tensors"][T1]["name"])
trunc("tensor-n-dims", f"n_dims of '{T1}'", lambda lay: lay["tensors"][T1]["n_dims"])
trunc("tensor-shape", f"dimension of '{T1}'", lambda lay: lay["tensors"][T1]["ne"])
trunc("tensor-type", f"type of '{T1}'", lambda lay: lay["tensors"][T1]["type"])
trunc("tensor-offset", f"offset of '{T1}'", lambda lay: lay["tensors"][T1]["offset"])


@case("gguf-truncated-data", "gguf", r"in\.gguf: tensor '[^']+' ends at byte \d+, past the end of the file .*truncated", e2e=True)
def _(p):
    b = p.read_bytes()
    p.write_bytes(b[: (gguf_layout(b)["data"] + len(b)) // 2])


@case("gguf-empty-file", "gguf", r"in\.gguf: truncated at byte 0 while reading magic")
def _(p):
    p.write_bytes(b"")


@case("gguf-bad-magic", "gguf", r"in\.gguf: not a GGUF file \(magic b'GGML'")
def _(p):
    edit_gguf(p, lambda b, lay: b.__setitem__(slice(0, 4), b"GGML"))


@case("gguf-version-1", "gguf", r"in\.gguf: GGUF version 1 is not supported")
def _(p):
    edit_gguf(p, lambda b, lay: put(b, 4, "<I", 1))


@case("gguf-version-99", "gguf", r"in\.gguf: GGUF version 99 is not supported")
def _(p):
    edit_gguf(p, lambda b, lay: put(b, 4, "<I", 99))


@case("gguf-huge-tensor-count", "gguf", r"in\.gguf: header claims 1099511627776 tensors and 45 metadata keys, more than the file.s \d+ bytes can hold")
def _(p):
    edit_gguf(p, lambda b, lay: put(b, 8, "<Q", 1 << 40))


@case("gguf-huge-kv-count", "gguf", r"in\.gguf: header claims .* and 18446744073709551615 metadata keys")
def _(p):
    edit_gguf(p, lambda b, lay: put(b, 16, "<Q", 2**64 - 1))


@case("gguf-huge-key-length", "gguf", r"in\.gguf: truncated at byte 32 while reading metadata key \(needs 1152921504606846976 bytes")
def _(p):
    edit_gguf(p, lambda b, lay: put(b, lay["kv"][ARCH]["key_len"], "<Q", 1 << 60))


@case("gguf-huge-array-count", "gguf", r"in\.gguf: truncated .* array 'tokenizer\.ggml\.tokens' \(1099511627776 strings\)")
def _(p):
    edit_gguf(p, lambda b, lay: put(b, lay["kv"]["tokenizer.ggml.tokens"]["value"] + 4, "<Q", 1 << 40))


@case("gguf-unknown-value-type", "gguf", rf"in\.gguf: metadata '{ARCH}' has unknown value type 77")
def _(p):
    edit_gguf(p, lambda b, lay: put(b, lay["kv"][ARCH]["vtype"], "<I", 77))


@case("gguf-offset-past-eof", "gguf", rf"in\.gguf: tensor '{T1}' ends at byte \d+, past the end of the file")
def _(p):
    edit_gguf(p, lambda b, lay: put(b, lay["tensors"][T1]["offset"], "<Q", 1 << 40))


@case("gguf-overlapping-tensors", "gguf", rf"in\.gguf: tensors '{T0}' and '{T1}' overlap in the file")
def _(p):
    edit_gguf(p, lambda b, lay: put(b, lay["tensors"][T1]["offset"], "<Q", 32))


@case("gguf-misaligned-offset", "gguf", rf"in\.gguf: tensor '{T1}' offset \d+ is not aligned to 32")
def _(p):
    def fn(b, lay):
        off = lay["tensors"][T1]["offset"]
        put(b, off, "<Q", struct.unpack_from("<Q", b, off)[0] + 4)
    edit_gguf(p, fn)


@case("gguf-unknown-ggml-type", "gguf", rf"in\.gguf: tensor '{T1}' has unknown ggml type 99")
def _(p):
    edit_gguf(p, lambda b, lay: put(b, lay["tensors"][T1]["type"], "<I", 99))


@case("gguf-too-many-dims", "gguf", rf"in\.gguf: tensor '{T1}' has 7 dimensions")
def _(p):
    edit_gguf(p, lambda b, lay: put(b, lay["tensors"][T1]["n_dims"], "<I", 7))


@case("gguf-row-not-multiple-of-block", "gguf", rf"in\.gguf: tensor '{T1}' row length 48 is not a multiple of Q8_0's block size 32")
def _(p):
    edit_gguf(p, lambda b, lay: put(b, lay["tensors"][T1]["ne"], "<Q", 48))


@case("gguf-shape-vs-metadata", "gguf", r"in\.gguf: tensor 'token_embd\.weight' has shape \(512, 64\); the metadata \(gemma4\.embedding_length.*\) implies \(512, 96\)", inspect=False)
def _(p):
    edit_gguf(p, lambda b, lay: put(b, lay["kv"]["gemma4.embedding_length"]["value"], "<I", 96))


@case("gguf-block-count-vs-arrays", "gguf", r"in\.gguf: gemma4\.attention\.head_count_kv has 4 entries, block_count is 3", inspect=False)
def _(p):
    edit_gguf(p, lambda b, lay: put(b, lay["kv"]["gemma4.block_count"]["value"], "<I", 3))


@case("gguf-wrong-metadata-type", "gguf", r"in\.gguf: metadata key 'gemma4\.attention\.head_count' is .*expected an integer", inspect=False)
def _(p):
    def fn(b, lay):
        f = lay["kv"]["gemma4.attention.head_count"]
        put(b, f["vtype"], "<I", 6)  # FLOAT32 over the u32 4: a denormal float
    edit_gguf(p, fn)


@case("gguf-missing-metadata-key", "gguf", r"in\.gguf: metadata key 'gemma4\.block_count' is missing", inspect=False)
def _(p):
    edit_gguf(p, lambda b, lay: b.__setitem__(slice(lay["kv"]["gemma4.block_count"]["key"] + 7, lay["kv"]["gemma4.block_count"]["key"] + 12), b"BLOCK"))


@case("gguf-unsupported-architecture", "gguf", r"in\.gguf: general\.architecture is 'llama3'; expected one of gemma3, gemma4", inspect=False)
def _(p):
    set_gguf_string(ARCH, "llama3")(p)


@case("gguf-nan-weight", "gguf", r"in\.gguf: tensor 'output_norm\.weight' has a non-finite value at index \(5,\)", inspect=False)
def _(p):
    edit_gguf(p, lambda b, lay: put(b, lay["data"] + _offset(b, lay, "output_norm.weight") + 20, "<f", float("nan")))


@case("gguf-inf-block-scale", "gguf", rf"in\.gguf: tensor '{T1}' has a non-finite value at index \(0, 0\)", inspect=False)
def _(p):
    edit_gguf(p, lambda b, lay: put(b, lay["data"] + _offset(b, lay, T1), "<e", float("inf")))  # first Q8_0 block's d


def _offset(b, lay, name):
    return struct.unpack_from("<Q", b, lay["tensors"][name]["offset"])[0]


# safetensors
Q = "model.layers.0.self_attn.q_proj.weight"
NORM = "model.norm.weight"


@case("st-truncated-header-length", "hf", r"model\.safetensors: not a readable safetensors file \(.*header")
def _(d):
    (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5])


@case("st-header-length-past-eof", "hf", r"model\.safetensors: not a readable safetensors file \(.*header")
def _(d):
    b = bytearray((d / "model.safetensors").read_bytes())
    put(b, 0, "<Q", 1 << 40)
    (d / "model.safetensors").write_bytes(bytes(b))


@case("st-truncated-header", "hf", r"model\.safetensors: not a readable safetensors file \(.*header")
def _(d):
    b = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(b[: 8 + struct.unpack_from("<Q", b)[0] // 2])


@case("st-bad-header-json", "hf", r"model\.safetensors: not a readable safetensors file \(.*JSON")
def _(d):
    b = bytearray((d / "model.safetensors").read_bytes())
    b[8] = ord("[")
    (d / "model.safetensors").write_bytes(bytes(b))


@case("st-unknown-dtype", "hf", r"model\.safetensors: not a readable safetensors file \(.*F33")
def _(d):
    edit_st(lambda h, data: h[Q].update(dtype="F33"))(d)


@case("st-wrong-dtype", "hf", rf"model\.safetensors: tensor '{Q}' has dtype I32; expected BF16, F16 or F32", inspect=False)
def _(d):
    edit_st(lambda h, data: h[Q].update(dtype="I32"))(d)


@case("st-offsets-past-eof", "hf", r"model\.safetensors: not a readable safetensors file \(.*offset")
def _(d):
    def fn(h, data):
        last = max((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][1])
        s, e = h[last]["data_offsets"]
        h[last]["data_offsets"] = [s + 1024, e + 1024]
    edit_st(fn)(d)


@case("st-overlapping-tensors", "hf", r"model\.safetensors: not a readable safetensors file \(.*offset")
def _(d):
    def fn(h, data):
        a, b = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])[:2]
        h[b]["data_offsets"] = [h[b]["data_offsets"][0] - 4, h[b]["data_offsets"][1] - 4]
    edit_st(fn)(d)


@case("st-wrong-byte-count", "hf", r"model\.safetensors: not a readable safetensors file \(.*offset")
def _(d):
    edit_st(lambda h, data: h[NORM].update(shape=[63]))(d)


@case("st-shape-vs-config", "hf", rf"model\.safetensors: tensor '{Q}' has shape \(64, 128\); config\.json implies \(128, 64\)", inspect=False)
def _(d):
    edit_st(lambda h, data: h[Q].update(shape=[64, 128]))(d)


@case("st-nan-weight", "hf", rf"tensor '{Q}' has a non-finite value at index \(0, 5\)", e2e=True, inspect=False)
def _(d):
    poke_value(Q, float("nan"))(d)


@case("st-inf-weight", "hf", rf"tensor '{NORM}' has a non-finite value at index \(5,\)", inspect=False)
def _(d):
    poke_value(NORM, float("-inf"))(d)


@case("st-no-weights-file", "hf", r"neither model\.safetensors nor model\.safetensors\.index\.json found")
def _(d):
    (d / "model.safetensors").unlink()


@case("index-missing-shard", "sharded", r"model\.safetensors\.index\.json: tensor '[^']+' is in shard 'model-00002-of-0000\d\.safetensors', which does not exist",
      e2e=True)
def _(d):
    next(d.glob("model-00002-of-*.safetensors")).unlink()


@case("index-bad-json", "sharded", r"model\.safetensors\.index\.json:\d+: invalid JSON")
def _(d):
    p = d / "model.safetensors.index.json"
    p.write_text(p.read_text().replace('"weight_map"', "weight_map", 1))


@case("index-not-an-object", "sharded", r"model\.safetensors\.index\.json: 'weight_map' is missing or empty")
def _(d):
    (d / "model.safetensors.index.json").write_text("[1, 2, 3]")


@case("index-tensor-not-in-shard", "sharded", rf"model-0000\d-of-0000\d\.safetensors: tensor '{NORM}' is not in this shard, though model\.safetensors\.index\.json puts it there")
def _(d):
    p = d / "model.safetensors.index.json"
    idx = json.loads(p.read_text())
    wm = idx["weight_map"]
    wm[NORM] = next(s for s in sorted(set(wm.values())) if s != wm[NORM])
    p.write_text(json.dumps(idx))


# config.json
@case("config-bad-json", "hf", r"config\.json:2: invalid JSON \(Expecting ':' delimiter\)")
def _(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("hidden_size")
    (d / "config.json").write_text('{\n  "hidden_size" 64,\n' + json.dumps(cfg, indent=2)[2:])  # ':' missing on line 2


@case("config-not-an-object", "hf", r"config\.json: expected a JSON object, found list")
def _(d):
    (d / "config.json").write_text("[]")


@case("config-missing-field", "hf", r"config\.json: missing required key 'hidden_size'", e2e=True, inspect=False)
def _(d):
    edit_config(lambda c: c.pop("hidden_size"))(d)


@case("config-wrong-type", "hf", r"config\.json: hidden_size is 'sixty-four'; expected an integer", inspect=False)
def _(d):
    edit_config(lambda c: c.update(hidden_size="sixty-four"))(d)


@case("config-zero-heads", "hf", r"config\.json: num_attention_heads is 0; expected a positive integer", inspect=False)
def _(d):
    edit_config(lambda c: c.update(num_attention_heads=0))(d)


@case("config-layer-types-not-a-list", "hf", r"config\.json: layer_types is 4; expected a list", inspect=False)
def _(d):
    edit_config(lambda c: c.update(layer_types=4))(d)


@case("config-unsupported-model-type", "hf", r"config\.json: model_type 'llama' .* is not supported", inspect=False)
def _(d):
    edit_config(lambda c: c.update(model_type="llama", architectures=["LlamaForCausalLM"]))(d)


@case("config-layer-count-mismatch", "hf", r"config\.json: layer_types has 4 entries, num_hidden_layers is 3", inspect=False)
def _(d):
    edit_config(lambda c: c.update(num_hidden_layers=3))(d)


@case("config-ffn-vs-tensors", "hf", r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.down_proj\.weight' has shape \(64, 128\); config\.json implies \(64, 256\)", inspect=False)
def _(d):
    edit_config(lambda c: c.update(intermediate_size=256))(d)


@case("config-missing", "hf", r"config\.json: file not found", inspect=False)
def _(d):
    (d / "config.json").unlink()


# paths
@case("path-does-not-exist", "hf", r"model '[^']*/nope': not a preset .* and no such file or directory", e2e=True, inspect=False)
def _(d):
    return str(d / "nope"), None


@case("out-dir-under-a-file", "hf", r"error: .*/out/sub/work: Not a directory", status=1, e2e=True, also=(), inspect=False)  # IOFailure
def _(d):
    (d.parent / "out").write_text("a file, not a directory")
    return str(d), d.parent / "out" / "sub"


# -- the tests ---------------------------------------------------------------------------

def leftovers(out: Path) -> list[str]:
    if not out.is_dir():
        return []
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.suffix in (".gguf", ".partial") or ".gguf." in p.name)


def prepare(bases, tmp_path, base, make, command: str = "compress") -> tuple[list[str], Path]:
    """Damage a copy of the good input; return the `quantkit COMMAND` arguments and the output directory."""
    src = tmp_path / bases[base].name
    (shutil.copytree if bases[base].is_dir() else shutil.copy)(bases[base], src)
    model, out = make(src) or (str(src), None)
    out = out or tmp_path / "out"
    args = {"compress": ["compress", model, *FLAGS, "--out", str(out)],
            "eval": ["eval", model, "--tokens", "512"],
            "imatrix": ["imatrix", model, "--calib-tokens", "512", "--out", str(out / "imatrix.gguf")],
            "inspect": ["inspect", model]}
    return args[command], out


def check(returncode, stdout, stderr, out, pattern, status) -> None:
    lines = stderr.splitlines()
    assert "Traceback" not in stderr + stdout
    assert returncode == status, stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and re.search(pattern, lines[0]), lines[0]
    assert leftovers(out) == []


def run_in_process(monkeypatch, capfd, args: list[str]) -> tuple[int, str, str]:
    """`quantkit ARGS` through the console script's entry point, in this process."""
    from quantkit.cli import main

    capfd.readouterr()  # drop anything written while preparing the case
    monkeypatch.setattr(sys, "argv", ["quantkit", *args])
    previous = signal.getsignal(signal.SIGTERM)  # main() installs its own SIGTERM handler
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    out, err = capfd.readouterr()
    return code, out, err


@pytest.mark.parametrize("base,make,pattern,status", CASES)
def test_malformed_input(bases, tmp_path, monkeypatch, capfd, base, make, pattern, status):
    args, out = prepare(bases, tmp_path, base, make)
    check(*run_in_process(monkeypatch, capfd, args), out, pattern, status)


@pytest.mark.parametrize("command,base,make,pattern,status", OPENERS)
def test_malformed_input_every_command(bases, tmp_path, monkeypatch, capfd, command, base, make, pattern, status):
    """The same damage given to `eval`, `imatrix` (and `inspect`) gives the same one line."""
    args, out = prepare(bases, tmp_path, base, make, command)
    check(*run_in_process(monkeypatch, capfd, args), out, pattern, status)


@pytest.mark.parametrize("base,make,pattern,status", E2E_CASES)
def test_malformed_input_end_to_end(bases, tmp_path, base, make, pattern, status):
    args, out = prepare(bases, tmp_path, base, make)
    r = subprocess.run([str(QUANTKIT), *args], capture_output=True, text=True, timeout=300)
    check(r.returncode, r.stdout, r.stderr, out, pattern, status)


def test_table_is_large_enough():
    assert len(CASES) >= 30
    # the subprocess subset: a few, and at least one of each kind of input
    assert 4 <= len(E2E_CASES) <= 8
    ids = [p.id for p in E2E_CASES]
    for prefix in ("gguf-", "st-", "config-", "path-", "out-"):
        assert any(i.startswith(prefix) for i in ids), (prefix, ids)


def test_in_process_run_restores_sigterm_handler(monkeypatch, capfd, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    code, _, err = run_in_process(monkeypatch, capfd, ["compress", str(tmp_path / "nope"), *FLAGS, "--out", str(tmp_path / "out")])
    assert code == 2 and err.startswith("error: "), (code, err)
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("tensor,element,index", [
    ("model.layers.2.post_feedforward_layernorm.weight", 7, "(7,)"),  # a norm of the last block
    ("model.layers.1.layer_scalar", 0, "(0,)"),  # a 1-element scalar
    ("model.layers.2.mlp.down_proj.weight", 130, "(1, 2)"),  # the last block's last projection
])
@pytest.mark.parametrize("command", [
    ["compress", "--type", "Q4_K", "--method", "gptq", "--calib-tokens", "512", "--tokens", "0"],
    ["compress", "--bits", "4", "--method", "imatrix", "--calib-tokens", "512", "--tokens", "0"],
    ["compress", "--format", "safetensors", "--bits", "4", "--method", "gptq", "--calib-tokens", "512", "--tokens", "0"],
    ["imatrix", "--calib-tokens", "512"],
], ids=["gptq", "budget", "safetensors", "imatrix"])
def test_non_finite_values_are_found_before_calibration(bases, tmp_path, monkeypatch, capfd, tensor, element, index,
                                                         command):
    """NaN or Inf anywhere, 1-D norms and scalars included, ends a calibrated run before its first forward pass:
    the calibration pass itself is replaced by one that fails the test."""
    import quantkit.calibration.capture as capture_module
    import quantkit.compress as compress_module
    import quantkit.sequential as sequential_module

    def calibration_started(*args, **kwargs):
        raise AssertionError("calibration started before the weights were checked")

    for module, name in ((capture_module, "capture"), (compress_module, "capture"), (compress_module, "_build"),
                         (sequential_module, "gptq_int")):
        monkeypatch.setattr(module, name, calibration_started)
    src = tmp_path / "hf"
    shutil.copytree(bases["hf"], src)
    edit_st(lambda h, data: struct.pack_into("<f", data, h[tensor]["data_offsets"][0] + 4 * element, float("nan")))(src)
    out = tmp_path / "out"
    args = [command[0], str(src), *command[1:]]
    args += ["--out", str(out / "imatrix.gguf")] if command[0] == "imatrix" else ["--out", str(out)]
    pattern = rf"hf: tensor '{re.escape(tensor)}' has a non-finite value at index {re.escape(index)}"
    check(*run_in_process(monkeypatch, capfd, args), out, pattern, 2)
