"""IQ2_S and IQ3_S encoders against llama.cpp, through test_kernels_llamacpp.py's harness.

The same reduced F32 GGUF (``f32_source``: two real Gemma 3 270M layers plus
random and adversarial tensors) goes through ``llama_model_quantize`` with an
imatrix (``_imatrix``: random positive per-column values, 2% dead channels),
--pure at the preset whose default type is IQ2_S (IQ2_M) or IQ3_S (IQ3_S);
every quantized tensor must equal quantkit's bytes (``_compare_all``).  The
presets are named here because formats.gguf_model.FILE_TYPE (the preset that
test_kernels_llamacpp.py derives from a type) has no entry for these types.

Run: .venv/bin/pytest -m integration tests/integration/test_kernels_iq_s_llamacpp.py -s
"""

from __future__ import annotations

import pytest

from .llamacpp import llama_quantize
from .test_kernels_llamacpp import NTHREAD, _compare_all, _imatrix, f32_source, real_gguf  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

# llama-quant.cpp llama_ftype_get_default_type: the preset whose every tensor gets the type under --pure
PRESET = {"IQ2_S": "IQ2_M", "IQ3_S": "IQ3_S"}


@pytest.mark.parametrize("qname", list(PRESET))
def test_iq_s_imatrix_encoder_matches_llama_quantize(qname, f32_source, tmp_path):
    src, tensors = f32_source
    imatrix = _imatrix(tensors)
    out = tmp_path / f"{qname}-imatrix.gguf"
    llama_quantize(src, out, PRESET[qname], imatrix, threads=NTHREAD, pure=True)
    stats = _compare_all(out, tensors, qname, imatrix)
    print(f"\n{qname} + imatrix: byte-identical to llama.cpp on {stats}")
    assert stats["target"] >= 3, "too few tensors were quantized to the target type"
    assert stats["real"] >= 10 and stats["random"] >= 3
