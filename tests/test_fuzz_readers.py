"""Property-based fuzzing of the readers: any byte string given as a GGUF file or a
safetensors shard, and any JSON values put into config.json, either reads or raises
quantkit's BadInput; nothing else escapes and nothing hangs (each input has HANG_S
seconds, enforced by a timer, not just measured).

Each test prints how many inputs it tried (`pytest -s tests/test_fuzz_readers.py`);
`--hypothesis-show-statistics` adds hypothesis' own numbers. A coverage-guided run
with atheris lives in tests/fuzz/."""

import json
import signal
import struct
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.fuzz_readers import CONFIG, gguf_seed, read_all, safetensors_seed
from quantkit.errors import BadFile, BadInput
from quantkit.formats.gguf_reader import GGUFFile

EXAMPLES = 400
HANG_S = 5
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None)
FUZZ_SLOW = settings(FUZZ, max_examples=EXAMPLES // 4)  # each input decodes a whole (tiny) model


@contextmanager
def no_hang(what):
    def hung(signum, frame):
        raise AssertionError(f"{what}: no answer in {HANG_S} s (a hang)")

    old = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, HANG_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


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


def test_gguf_reader_never_crashes(tmp_path):
    seed = gguf_seed(tmp_path / "seed.gguf")
    p = tmp_path / "fuzz.gguf"
    tried = {"inputs": 0, "read": 0}

    @FUZZ
    @given(edits=st.lists(edit, min_size=1, max_size=4))
    def one(edits):
        p.write_bytes(_mutate(seed, edits))
        tried["inputs"] += 1
        with no_hang("GGUFFile"):
            try:
                f = GGUFFile(p)
            except BadFile:
                return
            for name in f.tensors:  # whatever parsed must be readable within the file
                assert f.raw(name).size == f.tensors[name].nbytes
            f.close()
        tried["read"] += 1

    one()
    print(f"\nGGUF reader: {tried['inputs']} inputs, {tried['read']} read, the rest BadFile; 0 uncaught, 0 hangs")
    assert tried["inputs"] >= EXAMPLES // 2


def test_safetensors_source_never_crashes(tmp_path):
    from quantkit.formats.hf_source import HFSource

    d = tmp_path
    seed = safetensors_seed(d / "seed.safetensors")
    (d / "config.json").write_text(json.dumps(CONFIG))
    tried = {"inputs": 0, "read": 0}

    @FUZZ
    @given(edits=st.lists(edit, min_size=1, max_size=4))
    def one(edits):
        (d / "model.safetensors").write_bytes(_mutate(seed, edits))
        tried["inputs"] += 1
        with no_hang("HFSource"):
            if not read_all(lambda: HFSource(d), tokenize=False):
                return
        tried["read"] += 1

    one()
    print(f"\nsafetensors source: {tried['inputs']} inputs, {tried['read']} read, the rest BadInput; 0 uncaught, 0 hangs")
    assert tried["inputs"] >= EXAMPLES // 2


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    """A real quantkit build (tiny Gemma 4 E-style: PLE, KV sharing, per-layer arrays, tokenizer)."""
    import tiny_models
    import tiny_tokenizer
    from quantkit.compress import CompressOptions, run
    from quantkit.formats.hf_source import HFSource

    d = tmp_path_factory.mktemp("tiny_e")
    model, _ = tiny_models.gemma4_e()
    model.save_pretrained(d)
    tiny_tokenizer.save(d)
    return run(HFSource(d), d / "out", CompressOptions(type_name="Q4_K", method="rtn", eval_tokens=0, progress=False)).path


@pytest.mark.parametrize("seed_of", ["gemma3 seed", "gemma4 build"])
def test_gguf_source_never_crashes(request, tmp_path, seed_of):
    """Edits aimed at the header (metadata, tokenizer, tensor infos) of a small Gemma 3 file and of a
    real quantkit build, then the whole source: spec, every tensor, the tokenizer."""
    from quantkit.formats.gguf_source import GGUFSource

    if seed_of == "gemma3 seed":
        path = tmp_path / "seed.gguf"
        gguf_seed(path)
    else:
        path = request.getfixturevalue("tiny_build")
    seed = path.read_bytes()
    header = GGUFFile(path).data_offset
    p = tmp_path / "fuzz.gguf"
    tried = {"inputs": 0, "read": 0}

    @(FUZZ if seed_of == "gemma3 seed" else FUZZ_SLOW)
    @given(edits=st.lists(st.tuples(st.integers(0, 3), st.integers(0, header - 1), st.integers(0, 255)), min_size=1, max_size=3))
    def one(edits):
        p.write_bytes(_mutate(seed, edits))
        tried["inputs"] += 1
        with no_hang("GGUFSource"):
            if not read_all(lambda: GGUFSource(p), tokenize=True):
                return
        tried["read"] += 1

    one()
    print(f"\nGGUF source ({seed_of}): {tried['inputs']} inputs, {tried['read']} read, the rest BadInput; 0 uncaught, 0 hangs")
    assert tried["inputs"] >= EXAMPLES // 8


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def tiny_config():
    import tiny_models

    _, cfg = tiny_models.gemma4_e()
    return json.loads(json.dumps(cfg))


def test_config_fields_never_crash(tiny_config):
    """Up to three fields of a real config.json replaced or removed: a spec (and the tensor
    shapes it implies) or BadInput."""
    from quantkit.models.spec import spec_from_hf_config, tensor_shapes

    keys = sorted(tiny_config)
    tried = {"inputs": 0, "read": 0}

    @FUZZ
    @given(changes=st.lists(st.tuples(st.sampled_from(keys), st.none() | json_value, st.booleans()), min_size=1, max_size=3))
    def one(changes):
        cfg = dict(tiny_config)
        for key, value, remove in changes:
            if remove:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        tried["inputs"] += 1
        with no_hang("spec_from_hf_config"):
            try:
                tensor_shapes(spec_from_hf_config(cfg))
            except BadInput:
                return
        tried["read"] += 1

    one()
    print(f"\nconfig.json fields: {tried['inputs']} inputs, {tried['read']} accepted, the rest BadInput; 0 uncaught, 0 hangs")
    assert tried["inputs"] >= EXAMPLES // 2
