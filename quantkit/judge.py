"""llama.cpp (through the optional llama-cpp-python) as the neutral judge of a
GGUF: full logits for whole chunks, each decoded from an empty cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from quantkit.errors import BadOption


class Judge:
    def __init__(self, path: Path, n_ctx: int = 512, threads: int | None = None):
        try:
            import llama_cpp
        except ImportError:
            raise BadOption("--judge llama.cpp needs llama-cpp-python (bash .ci/setup-env --test installs it)") from None
        self.path = Path(path)
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

    def close(self) -> None:
        self.llm.close()
