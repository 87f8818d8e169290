"""Test helpers around llama.cpp: its judge (quantkit.judge) and the F32 base of a GGUF."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType
from gguf.quants import dequantize

from quantkit.judge import Judge  # noqa: F401  (re-exported for the tests)


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
