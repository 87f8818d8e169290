"""What llama.cpp itself holds in memory while it runs a GGUF: a fresh process loads the file the way llama.cpp does
by default (mmap on), with n_ctx 4096, evaluates a 512-token prompt and generates 64 tokens. Its peak RSS comes from
the OS (os.wait4 on that process: mapped file pages it touched count, pages it never read do not); the KV-cache,
compute-buffer and model-buffer sizes from llama.cpp's own log lines.

By default llama.cpp maps the file with MAP_POPULATE (llama-mmap.cpp), so every page is read in at load time, the
Per-Layer Embedding table's too, although a token reads one row of it. Gemma 4's table is marked for on-demand
reading (gemma4.cpp: TENSOR_READ_LAZY), which llama.cpp's default `--lazy-mode auto` applies only above 4 GiB
(llama-model-loader.cpp lazy_read::add); `--lazy-mode on` applies it at any size. Each file is run both ways.

    .venv/bin/python benches/runtime_memory.py BUILD.gguf [BUILD2.gguf ...] [--ubatch N]

--ubatch N adds a third run per file, lazy and with the prompt evaluated in micro-batches of N tokens (llama.cpp's
-b N -ub N): the compute buffer llama.cpp reserves scales with the micro-batch, whose worst case is N x n_vocab
float32 logits.
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
UBATCH = 512  # llama.cpp's default micro-batch (n_batch 2048 is cut to n_ubatch 512 per graph)

# the child: load with mmap (the default), a 512-token prompt of random ids, 64 greedy tokens
CHILD = r"""
import sys
import numpy as np
import llama_cpp
import llama_cpp.llama_cpp as capi
path, n_ctx, n_prompt, n_gen, threads, lazy, ubatch = sys.argv[1], *map(int, sys.argv[2:8])
if lazy:  # llama.cpp's --lazy-mode on: Llama() takes its model parameters from capi.llama_model_default_params()
    default_params = capi.llama_model_default_params
    def lazy_params():
        p = default_params()
        p.lazy_mode = capi.LLAMA_LAZY_MODE_ON
        return p
    capi.llama_model_default_params = lazy_params
llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_batch=ubatch, n_ubatch=ubatch, n_threads=threads, verbose=True)
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


def measure(path: Path, threads: int | None = None, lazy: bool = False, ubatch: int = UBATCH) -> RuntimeMemory:
    threads = threads or len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "llama.log"
        code, _, peak = measured([sys.executable, "-c", CHILD, path, N_CTX, N_PROMPT, N_GENERATE, threads, int(lazy),
                                  ubatch],
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


def print_table(rows: list[tuple[str, tuple[RuntimeMemory, ...]]], ubatch: int | None = None) -> None:
    """One line per file: peak RSS with llama.cpp's default loading, with --lazy-mode on (and lazy with micro-batches
    of `ubatch`), and the buffers llama.cpp reported (the default run's; the compute buffer also at `ubatch`)."""
    print(f"\nllama.cpp at run time: mmap on, n_ctx {N_CTX}, a {N_PROMPT}-token prompt, {N_GENERATE} generated tokens "
          f"({len(os.sched_getaffinity(0))} threads); peak RSS with the default loading and with --lazy-mode on"
          + (f", and lazy with -ub {ubatch}" if ubatch else ""))
    extra = f"{f'-ub {ubatch} GB':>11} {f'compute -ub {ubatch} MB':>19} " if ubatch else ""
    hdr = (f"{'build':<34} {'file bytes':>14} {'peak RSS GB':>12} {'lazy on GB':>11} {extra}{'KV cache MB':>12} "
           f"{'compute MB':>11} {'model buf MB':>13}")
    print(hdr + "\n" + "-" * len(hdr))
    for name, (r, lz, *small) in rows:
        cols = f"{small[0].peak_rss / 1e9:>11.3f} {small[0].compute / 1e6:>19.1f} " if small else ""
        print(f"{name:<34} {r.path.stat().st_size:>14,} {r.peak_rss / 1e9:>12.3f} {lz.peak_rss / 1e9:>11.3f} {cols}"
              f"{r.kv_cache / 1e6:>12.1f} {r.compute / 1e6:>11.1f} {r.model_buffer / 1e6:>13.1f}"
              + ("" if lz.lazy_tensors else "   (--lazy-mode on: no tensor read on demand)"))


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("builds", nargs="+", type=Path)
    ap.add_argument("--ubatch", type=int, help="also run lazy with micro-batches of this many tokens")
    a = ap.parse_args()
    print_table([(p.name, (*measure_both(p), *([measure(p, lazy=True, ubatch=a.ubatch)] if a.ubatch else [])))
                 for p in a.builds], a.ubatch)
