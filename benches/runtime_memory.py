"""What llama.cpp itself holds in memory while it runs a GGUF: a fresh process loads the file the way llama.cpp does
by default (mmap on), with n_ctx 4096, evaluates a 512-token prompt and generates 64 tokens. Its peak RSS comes from
the OS (os.wait4 on that process: mapped file pages it touched count, pages it never read do not); the KV-cache,
compute-buffer and model-buffer sizes from llama.cpp's own log lines.

    .venv/bin/python benches/runtime_memory.py BUILD.gguf [BUILD2.gguf ...]
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from child import measured  # noqa: E402

N_CTX, N_PROMPT, N_GENERATE = 4096, 512, 64

# the child: load with mmap (the default), a 512-token prompt of random ids, 64 greedy tokens
CHILD = r"""
import sys
import numpy as np
import llama_cpp
path, n_ctx, n_prompt, n_gen, threads = sys.argv[1], *map(int, sys.argv[2:6])
llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_batch=512, n_threads=threads, verbose=True)
rng = np.random.default_rng(0)
prompt = [llm.token_bos()] + rng.integers(1000, llm.n_vocab() - 1000, n_prompt - 1).tolist()
n = 0
for token in llm.generate(prompt, top_k=1, temp=0.0):
    n += 1
    if n == n_gen:
        break
print(f"generated {n}", file=sys.stderr)
"""

MIB = 1024 * 1024


@dataclass
class RuntimeMemory:
    path: Path
    peak_rss: int  # bytes, the OS's maximum resident set of the llama.cpp process
    kv_cache: int  # bytes, every KV buffer (Gemma's sliding-window and global caches)
    compute: int  # bytes, the compute buffers
    model_buffer: int  # bytes, the model's (mapped) buffer
    generated: int


def _mib(pattern: str, log: str) -> int:
    return int(sum(float(m) for m in re.findall(pattern, log)) * MIB)


def measure(path: Path, threads: int | None = None) -> RuntimeMemory:
    threads = threads or len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "llama.log"
        code, _, peak = measured([sys.executable, "-c", CHILD, path, N_CTX, N_PROMPT, N_GENERATE, threads], log_path)
        log = log_path.read_text(errors="replace")
    if code != 0:
        raise SystemExit(f"llama.cpp failed on {path}:\n{log[-3000:]}")
    gen = re.search(r"^generated (\d+)$", log, re.M)
    return RuntimeMemory(path, peak, _mib(r"KV buffer size =\s*([\d.]+) MiB", log),
                         _mib(r"compute buffer size =\s*([\d.]+) MiB", log),
                         _mib(r"model buffer size =\s*([\d.]+) MiB", log), int(gen.group(1)) if gen else 0)


def print_table(rows: list[tuple[str, RuntimeMemory]]) -> None:
    print(f"\nllama.cpp at run time: mmap on, n_ctx {N_CTX}, a {N_PROMPT}-token prompt, {N_GENERATE} generated tokens "
          f"({len(os.sched_getaffinity(0))} threads)")
    hdr = (f"{'build':<34} {'file bytes':>14} {'peak RSS GB':>12} {'KV cache MB':>12} {'compute MB':>11} "
           f"{'model buf MB':>13}")
    print(hdr + "\n" + "-" * len(hdr))
    for name, r in rows:
        print(f"{name:<34} {r.path.stat().st_size:>14,} {r.peak_rss / 1e9:>12.3f} {r.kv_cache / 1e6:>12.1f} "
              f"{r.compute / 1e6:>11.1f} {r.model_buffer / 1e6:>13.1f}")


if __name__ == "__main__":
    print_table([(Path(a).name, measure(Path(a))) for a in sys.argv[1:]])
