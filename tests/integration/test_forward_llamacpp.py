"""quantkit's forward and tokenizer against llama.cpp on the real Gemma 3 270M.

Compared on the F32 base (the Q4_K_M file dequantized), not on the Q4_K_M file
itself: llama.cpp's quantized-weight kernels quantize activations to 8 bits,
which alone puts that file at mean KLD ~0.005 from its exact dequantization.
"""

import numpy as np
import pytest
import torch

from quantkit.calibration.text import documents, eval_chunks
from quantkit.formats.gguf_source import GGUFSource
from quantkit.models.gemma import Gemma
from quantkit.reports.metrics import Scorer

from .llamacpp import Judge

pytestmark = pytest.mark.integration


def test_tokenizer_matches_llamacpp_on_wiki(q4km_270m):
    tok = GGUFSource(q4km_270m).tokenizer()
    judge = Judge(q4km_270m)
    text = "\n\n".join(documents("wiki"))
    ours = tok.encode(text, bos=True)
    theirs = judge.tokenize(text, bos=True)
    assert len(ours) == len(theirs) == 418_350  # llama.cpp's tokenizer on the whole text: 418,350 tokens
    mismatch = np.nonzero(np.asarray(ours) != np.asarray(theirs))[0]
    assert mismatch.size == 0, f"first mismatch at token {mismatch[0]}"


def test_tokenizer_edge_cases_match_llamacpp(q4km_270m):
    tok = GGUFSource(q4km_270m).tokenizer()
    judge = Judge(q4km_270m)
    for text in ["", " ", "  leading", "tabs\tand\r\nCRLF", "\n\n\n\nmany newlines", "ümlaut ñ 日本語 😀 \x00\x7f",
                 "<bos> is plain text here", "a    b     c", "trailing   "]:
        assert tok.encode(text) == judge.tokenize(text), repr(text)


def test_forward_matches_llamacpp_on_f32_base(f32_270m):
    """>= 8,192 tokens of held-out wiki in 512-token chunks: top-1 >= 99.5 %, mean KL <= 1e-5."""
    src = GGUFSource(f32_270m)
    chunks = eval_chunks(src.tokenizer(), "wiki", 8192)
    assert chunks.ids.shape == (16, 512)
    model = Gemma(src.spec, src)
    judge = Judge(f32_270m)
    scorer = Scorer()
    with torch.inference_mode():
        for row in chunks.ids:
            ref = torch.from_numpy(judge.logits(row))
            ours = model.forward(torch.from_numpy(row)[None])[0]
            scorer.add(ours, torch.from_numpy(row), ref_logits=ref)
    r = scorer.result()
    print(f"\nquantkit vs llama.cpp F32: {r.n_tokens} tokens, mean KLD {r.mean_kld:.3e}, p99 {r.p99_kld:.3e}, top-1 {r.top1:.2f}%")
    assert r.top1 >= 99.5
    assert r.mean_kld <= 1e-5
