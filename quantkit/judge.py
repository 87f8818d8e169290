"""llama.cpp (through the optional llama-cpp-python) as the neutral judge of a GGUF: each chunk decoded from an
empty cache in one batch, logits requested only at the rows asked for (the output head, 262144 x 640 on Gemma 3
270M and most of its compute, then runs on those rows only)."""

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
        self.lib = llama_cpp
        self.path = Path(path)
        n = threads or os.cpu_count()
        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=n,
                                   n_threads_batch=n, verbose=False)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.llm.model))
        self.batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)

    def tokenize(self, text: str, bos: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False)

    def logits(self, ids, rows: slice | None = None) -> np.ndarray:
        """float32 logits [len(rows), V] at positions `rows` (default: all) of one chunk decoded from an empty
        cache."""
        rows = rows or slice(0, len(ids))
        b, lib = self.batch, self.lib
        for i, t in enumerate(ids):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0] = int(t), i, 1, 0
            b.logits[i] = rows.start <= i < rows.stop
        b.n_tokens = len(ids)
        lib.llama_memory_clear(lib.llama_get_memory(self.llm.ctx), True)
        rc = lib.llama_decode(self.llm.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed (rc={rc}) on {self.path}")
        n_out = len(range(len(ids))[rows])
        return np.ctypeslib.as_array(lib.llama_get_logits(self.llm.ctx), shape=(n_out, self.n_vocab)).copy()

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.llm.close()
