"""quantkit's reference forward vs llama.cpp prompt processing on the real Gemma 3 270M.

Same 512-token chunks of held-out wiki text, same thread count. quantkit runs twice: the
full forward with every position's logits (what evaluation needs), and the calibration
forward (embedding and blocks, no output head: what the capture runs). llama.cpp runs
prompt processing with all logits on the F32 base (the same dequantized weights quantkit
uses) and on the original Q4_K_M file. Prints tokens/s and the ratios.

    .venv/bin/python benches/forward.py [--chunks 4] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantkit.cache import cache_dir  # noqa: E402
from quantkit.calibration.text import eval_chunks  # noqa: E402
from quantkit.formats.gguf_source import GGUFSource  # noqa: E402
from quantkit.models.gemma import Gemma  # noqa: E402
from quantkit.sources import gemma3_270m_path  # noqa: E402
from tests.integration.llamacpp import Judge, write_f32_base  # noqa: E402


def tokens_per_second(run, chunks) -> float:
    run(chunks[0])  # warm-up: weight loading, thread pools
    t0 = time.perf_counter()
    for row in chunks:
        run(row)
    return chunks.size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    q4 = gemma3_270m_path()
    f32 = write_f32_base(q4, cache_dir("models") / "gemma-3-270m-f32.gguf")
    src = GGUFSource(f32)
    chunks = eval_chunks(src.tokenizer(), "wiki", 512 * args.chunks).ids

    model = Gemma(src.spec, src)

    def ours(row):
        with torch.inference_mode():
            model.forward(torch.from_numpy(row)[None])

    def calibration(row):  # the capture's forward: embedding and blocks, no head
        with torch.inference_mode():
            state = model.embed(torch.from_numpy(row)[None])
            for i in range(src.spec.n_layers):
                state = model.block(i, state)

    results = {"quantkit fp32": tokens_per_second(ours, chunks),
               "quantkit calibration": tokens_per_second(calibration, chunks)}
    for label, path in (("llama.cpp F32", f32), ("llama.cpp Q4_K_M", q4)):
        judge = Judge(path, threads=args.threads)
        results[label] = tokens_per_second(judge.logits, chunks)
        del judge

    print(f"Gemma 3 270M, {chunks.size} tokens in {len(chunks)} chunks of 512, {args.threads} threads, {os.cpu_count()} cores")
    print(f"{'engine':<22}{'tokens/s':>10}{'full fwd ratio':>16}{'calib fwd ratio':>17}")
    for label, tps in results.items():
        print(f"{label:<22}{tps:>10.1f}{results['quantkit fp32'] / tps:>15.2f}x"
              f"{results['quantkit calibration'] / tps:>16.2f}x")


if __name__ == "__main__":
    main()
