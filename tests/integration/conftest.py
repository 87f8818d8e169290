"""Session fixtures: what more than one integration test builds from the real 270M is built once per run."""

from dataclasses import dataclass

import pytest

from quantkit.cache import cache_dir
from quantkit.sources import gemma3_270m_path

from .llamacpp import write_f32_base


@pytest.fixture(scope="session")
def q4km_270m():
    return gemma3_270m_path()


@pytest.fixture(scope="session")
def f32_270m(q4km_270m):
    return write_f32_base(q4km_270m, cache_dir("models") / "gemma-3-270m-f32.gguf")


@dataclass(frozen=True)
class C4Capture:
    chunks: int  # chunks of ctx tokens: the first chunks * ctx tokens of the c4 stream, BOS first in each
    ctx: int
    stats: dict  # canonical linear name -> quantkit.calibration.capture statistics


@pytest.fixture(scope="session")
def c4_capture_270m(f32_270m):
    """quantkit's capture of the F32 base over the first 4 x 512 tokens of the built-in c4 text, the tokens
    `llama-imatrix --chunks 4 -c 512` reads: test_imatrix_llamacpp.py compares the two, test_recipes_llamacpp.py
    hands it to llama.cpp as a real imatrix."""
    from quantkit.calibration.capture import capture
    from quantkit.calibration.text import eval_chunks
    from quantkit.formats.gguf_source import GGUFSource

    base = GGUFSource(f32_270m)
    chunks, ctx = 4, 512
    ids = eval_chunks(base.tokenizer(), "c4", chunks * ctx, ctx).ids
    return C4Capture(chunks, ctx, capture(base.spec, base, ids, batch_size=2, progress=False).stats)
