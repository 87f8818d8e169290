"""The real 270M written by quantkit at Q8_0, Q4_K and Q2_K (640-wide rows at the
registry's fallback) loads in llama.cpp, and llama.cpp's output agrees with
quantkit's forward over the same dequantized weights.

llama.cpp's quantized-weight kernels quantize activations to 8 bits, so even its
own files sit at mean KL 0.002 (Q8_0) to 0.007 (Q2_K) from an exact forward over
their weights (llama.cpp's own floor, measured on 4 chunks); a misplaced or mis-encoded
tensor shows as >> 0.1.

Judged on the first EVAL_CHUNKS = 4 chunks of wiki (1,020 scored tokens). Measured on
8 chunks, chunk by chunk (docs/CI.md): mean KLD 0.0079-0.0101 per chunk at Q2_K (4
chunks 0.0087, 8 chunks 0.0088; limit 0.02), 0.0013-0.0024 at Q8_0, 0.0038-0.0069 at
Q4_K; top-1 91.8-95.3 % per chunk at Q2_K (sd 1.3 points), 94.12 % on 4 chunks and
93.77 % on 8 (limit 93 %): 1.70 standard errors of the mean above the limit on 4 chunks,
1.66 on 8, so the 4-chunk check sits as far from its limits as the 8-chunk one did."""

import pytest
import torch

from quantkit import plan as plans
from quantkit.calibration.text import eval_chunks
from quantkit.formats.gguf_model import write_gguf
from quantkit.formats.gguf_source import GGUFSource
from quantkit.judge import Judge
from quantkit.models.gemma import Gemma
from quantkit.reports.metrics import Scorer, scored

pytestmark = pytest.mark.integration

EVAL_CHUNKS = 4


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_K", "Q2_K"])
def test_llamacpp_agrees_with_quantkit_on_quantkit_build(f32_270m, tmp_path, type_name):
    base = GGUFSource(f32_270m)
    types = plans.uniform(base.table, type_name).types
    out = write_gguf(base, tmp_path / f"270m-{type_name}.gguf", types, progress=False)
    build = GGUFSource(out)
    assert type_name in {i.dtype for i in build.infos.values()}  # the 2048-wide ffn_down rows take the type itself
    chunks = eval_chunks(build.tokenizer(), "wiki", EVAL_CHUNKS * 512)
    assert chunks.ids.shape == (EVAL_CHUNKS, 512)
    judge = Judge(out)
    model = Gemma(build.spec, build)
    scorer = Scorer()
    with torch.inference_mode():
        for row in chunks.ids:
            rows = scored(len(row))  # the output head runs at the scored positions only, in both
            exact = model.forward(torch.from_numpy(row)[None], rows)[0]
            scorer.add(torch.from_numpy(judge.logits(row, rows)), torch.from_numpy(row), ref_logits=exact)
    r = scorer.result()
    print(f"\n{type_name}: llama.cpp vs quantkit forward on the same weights: mean KLD {r.mean_kld:.5f}, top-1 {r.top1:.2f}%")
    assert r.mean_kld <= 0.02
    assert r.top1 >= 93.0
