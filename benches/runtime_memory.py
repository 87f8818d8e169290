"""What llama.cpp itself holds in memory while it runs a GGUF: a fresh process loads the file the way llama.cpp does
by default (mmap on), with n_ctx 4096, evaluates a 512-token prompt and generates 64 tokens. Its peak RSS comes from
the OS (os.wait4 on that process: mapped file pages it touched count, pages it never read do not); the KV-cache,
compute-buffer and model-buffer sizes from llama.cpp's own log lines.

By default llama.cpp maps the file with MAP_POPULATE (llama-mmap.cpp), so every page is read in at load time, the
Per-Layer Embedding table's too, although a token reads one row of it. Gemma 4's table is marked for on-demand
reading (gemma4.cpp: TENSOR_READ_LAZY), which llama.cpp's default `--lazy-mode auto` applies only above 4 GiB
(llama-model-loader.cpp lazy_read::add); `--lazy-mode on` applies it at any size. Each file is run both ways.

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
import llama_cpp.llama_cpp as capi
path, n_ctx, n_prompt, n_gen, threads, lazy = sys.argv[1], *map(int, sys.argv[2:7])
if lazy:  # llama.cpp's --lazy-mode on: Llama() takes its model parameters from capi.llama_model_default_params()
    default_params = capi.llama_model_default_params
    def lazy_params():
        p = default_params()
        p.lazy_mode = capi.LLAMA_LAZY_MODE_ON
        return p
    capi.llama_model_default_params = lazy_params
llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_batch=512, n_threads=threads, verbose=True)
rng = np.random.default_rng(0)
edge = min(1000, llm.n_vocab() // 4)  # away from the special tokens at either end
prompt = [llm.token_bos()] + rng.integers(edge, llm.n_vocab() - edge, n_prompt - 1).tolist()
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
    lazy_tensors: int = 0  # tensors llama.cpp reported reading on demand (--lazy-mode on)


def _mib(pattern: str, log: str) -> int:
    return int(sum(float(m) for m in re.findall(pattern, log)) * MIB)


def measure(path: Path, threads: int | None = None, lazy: bool = False) -> RuntimeMemory:
    threads = threads or len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "llama.log"
        code, _, peak = measured([sys.executable, "-c", CHILD, path, N_CTX, N_PROMPT, N_GENERATE, threads, int(lazy)],
                                 log_path)
        log = log_path.read_text(errors="replace")
    if code != 0:
        raise SystemExit(f"llama.cpp failed on {path}:\n{log[-3000:]}")
    gen = re.search(r"^generated (\d+)$", log, re.M)
    return RuntimeMemory(path, peak, _mib(r"KV buffer size =\s*([\d.]+) MiB", log),
                         _mib(r"compute buffer size =\s*([\d.]+) MiB", log),
                         _mib(r"model buffer size =\s*([\d.]+) MiB", log), int(gen.group(1)) if gen else 0,
                         len(re.findall(r"lazy read enabled", log)))


def measure_both(path: Path) -> tuple[RuntimeMemory, RuntimeMemory]:
    """(llama.cpp's default, --lazy-mode on)."""
    return measure(path), measure(path, lazy=True)


def print_table(rows: list[tuple[str, tuple[RuntimeMemory, RuntimeMemory]]]) -> None:
    """One line per file: peak RSS with llama.cpp's default loading and with --lazy-mode on, and the buffers
    llama.cpp reported (the default run's)."""
    print(f"\nllama.cpp at run time: mmap on, n_ctx {N_CTX}, a {N_PROMPT}-token prompt, {N_GENERATE} generated tokens "
          f"({len(os.sched_getaffinity(0))} threads); peak RSS with the default loading and with --lazy-mode on")
    hdr = (f"{'build':<34} {'file bytes':>14} {'peak RSS GB':>12} {'lazy on GB':>11} {'KV cache MB':>12} "
           f"{'compute MB':>11} {'model buf MB':>13}")
    print(hdr + "\n" + "-" * len(hdr))
    for name, (r, lz) in rows:
        print(f"{name:<34} {r.path.stat().st_size:>14,} {r.peak_rss / 1e9:>12.3f} {lz.peak_rss / 1e9:>11.3f} "
              f"{r.kv_cache / 1e6:>12.1f} {r.compute / 1e6:>11.1f} {r.model_buffer / 1e6:>13.1f}"
              + ("" if lz.lazy_tensors else "   (--lazy-mode on: no tensor read on demand)"))


if __name__ == "__main__":
    print_table([(Path(a).name, measure_both(Path(a))) for a in sys.argv[1:]])
