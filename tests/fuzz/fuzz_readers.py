"""Coverage-guided fuzzing of quantkit's readers with atheris (libFuzzer for Python).

The property is the one tests/test_fuzz_readers.py checks with hypothesis: any input
either reads or raises quantkit's BadInput; any other exception is a crash, and an input
slower than libFuzzer's -timeout is a hang. Targets:

    gguf          the GGUF header parser (formats.gguf_reader.GGUFFile), every tensor's bytes
    gguf-source   GGUFSource on top of it: spec from metadata, every tensor dequantized, tokenizer
    safetensors   HFSource on a one-shard checkpoint: the input is model.safetensors

atheris is not a quantkit dependency; install it where you fuzz (pip install atheris), then

    .venv/bin/python tests/fuzz/fuzz_readers.py seeds fuzz-corpus
    .venv/bin/python tests/fuzz/fuzz_readers.py gguf fuzz-corpus/gguf -max_total_time=3600 -timeout=10

libFuzzer prints the number of inputs run (`#N ... exec/s`) as it goes and writes any
crashing input to crash-*; replay one with `... fuzz_readers.py gguf crash-<sha>`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

WORK = Path(tempfile.gettempdir())  # main() makes a folder of its own
CONFIG = {"model_type": "gemma3_text", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 1,
          "head_dim": 32, "num_key_value_heads": 1, "intermediate_size": 64, "vocab_size": 8}


def _gguf(data: bytes) -> None:
    from quantkit.errors import BadInput
    from quantkit.formats.gguf_reader import GGUFFile

    p = WORK / "fuzz.gguf"
    p.write_bytes(data)
    try:
        f = GGUFFile(p)
    except BadInput:
        return
    for name, t in f.tensors.items():
        assert f.raw(name).size == t.nbytes
    f.close()


def read_all(open_source, tokenize: bool) -> bool:
    """What every source target does with an input: open it, read every tensor (and tokenize a sentence). True if
    it read; False if it was refused with quantkit's BadInput; anything else propagates (a crash)."""
    from quantkit.errors import BadInput

    try:
        src = open_source()
        for n in src.names():
            src.get(n)
        if tokenize:
            src.tokenizer().encode("The quick brown fox")
    except BadInput:
        return False
    return True


def _gguf_source(data: bytes) -> None:
    from quantkit.formats.gguf_source import GGUFSource

    p = WORK / "fuzz.gguf"
    p.write_bytes(data)
    read_all(lambda: GGUFSource(p), tokenize=True)


def _safetensors(data: bytes) -> None:
    from quantkit.formats.hf_source import HFSource

    d = WORK / "hf"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(CONFIG))
    (d / "model.safetensors").write_bytes(data)
    read_all(lambda: HFSource(d), tokenize=False)


TARGETS = {"gguf": _gguf, "gguf-source": _gguf_source, "safetensors": _safetensors}


def gguf_seed(path: Path) -> bytes:
    """A Gemma 3 GGUF with the metadata a spec needs, a SentencePiece vocabulary, the embedding and the final norm."""
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "gemma3")
    w.add_uint32("gemma3.block_count", 1)
    w.add_uint32("gemma3.embedding_length", 32)
    w.add_uint32("gemma3.attention.head_count", 1)
    w.add_uint32("gemma3.attention.head_count_kv", 1)
    w.add_uint32("gemma3.feed_forward_length", 64)
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", ["<pad>", "<eos>", "<bos>", "a", "b", "ab", "\u2581", "\u2581a"])
    w.add_array("tokenizer.ggml.scores", [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0])
    w.add_array("tokenizer.ggml.token_type", [3, 3, 3, 1, 1, 1, 1, 1])
    w.add_tensor("token_embd.weight", np.linspace(-1, 1, 8 * 32, dtype=np.float32).reshape(8, 32))
    w.add_tensor("output_norm.weight", np.ones(32, np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return Path(path).read_bytes()


def safetensors_seed(path: Path) -> bytes:
    """The embedding and final norm of a checkpoint with config CONFIG."""
    import torch
    from safetensors.torch import save_file

    save_file({"model.embed_tokens.weight": torch.linspace(-1, 1, 8 * 32).reshape(8, 32),
               "model.norm.weight": torch.ones(32)}, str(path))
    return Path(path).read_bytes()


def write_seeds(root: Path) -> None:
    """One small valid input per target, to start the corpus from."""
    for target in TARGETS:
        (root / target).mkdir(parents=True, exist_ok=True)
    gguf_seed(root / "gguf" / "seed.gguf")
    gguf_seed(root / "gguf-source" / "seed.gguf")
    safetensors_seed(root / "safetensors" / "seed.safetensors")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "seeds":
        write_seeds(Path(sys.argv[2]))
        return
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{seeds DIR | {' | '.join(TARGETS)} [libFuzzer args] CORPUS...}}")
    import atheris

    global WORK
    WORK = Path(tempfile.mkdtemp(prefix="quantkit-fuzz-"))
    target = TARGETS[sys.argv.pop(1)]
    with atheris.instrument_imports(include=["quantkit"]):
        import quantkit.formats.gguf_source  # noqa: F401
        import quantkit.formats.hf_source  # noqa: F401
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
