"""llama.cpp (through llama-cpp-python) as the neutral judge: logits for whole
chunks, each decoded from an empty cache, and the F32 base of a GGUF."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType
from gguf.quants import dequantize


class Judge:
    def __init__(self, path: Path, n_ctx: int = 512, threads: int | None = None):
        import llama_cpp  # test dependency; import failure fails the test

        self.llm = llama_cpp.Llama(
            str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
            n_threads=threads or os.cpu_count(), verbose=False,
        )

    def tokenize(self, text: str, bos: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False)

    def logits(self, ids) -> np.ndarray:
        """[T, V] float32 logits for one chunk decoded from an empty cache."""
        self.llm.reset()
        self.llm.eval([int(t) for t in ids])
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)


def write_f32_base(src: Path, dst: Path) -> Path:
    """Dequantize every tensor of `src` to F32 with gguf-py (the oracle decoder) and copy
    metadata and tokenizer: the full-precision base of anchors-270m.md."""
    if dst.exists():
        return dst
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(str(dst) + ".partial", arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if len(f.types) > 1 else None
        w.add_key_value(key, f.contents(), vtype, sub_type=sub)
    w.add_file_type(0)  # ALL_F32
    for t in r.tensors:
        a = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w.add_tensor(t.name, a.reshape(tuple(reversed([int(d) for d in t.shape]))), raw_dtype=GGMLQuantizationType.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(str(dst) + ".partial", dst)
    return dst
