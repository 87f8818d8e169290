"""quantkit's reference forward vs llama.cpp prompt processing on the real Gemma 3 270M.

Same 512-token chunks of held-out wiki text, same thread count. quantkit runs twice: the
full forward with every position's logits (what evaluation needs), and the calibration
forward (embedding and blocks, no output head: what the capture runs). llama.cpp runs
prompt processing with all logits on the F32 base (the same dequantized weights quantkit
uses) and on the original Q4_K_M file. Prints tokens/s and the ratios, and first the
float32 products the forward is made of, through torch's `F.linear` (MKL) and through
`quantkit.models.matmul` (oneDNN), on the 270M's and E2B's shapes.

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


PRODUCTS = [  # (tokens, in, out): the 270M's q, o, gate/up, down and head (scored rows); E2B's gate/up and down
    (512, 640, 1024), (512, 1024, 640), (512, 640, 2048), (512, 2048, 640), (255, 640, 262_144),
    (2048, 1536, 6144), (2048, 6144, 1536)]


def products() -> None:
    import torch.nn.functional as F

    from quantkit.models import matmul

    def best(f, n):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times)

    print(f"{'tokens x in -> out':<24}{'F.linear':>10}{'oneDNN':>10}  GFLOP/s  ratio")
    for t, i, o in PRODUCTS:
        x, w = torch.randn(t, i), torch.randn(o, i)
        packed = matmul.pack(w)
        n = 3 if o > 100_000 else 20
        a, b = best(lambda: F.linear(x, w), n), best(lambda: matmul.linear(x, packed), n)
        gflop = 2 * t * i * o / 1e9
        print(f"{f'{t} x {i} -> {o}':<24}{gflop / a:>10.0f}{gflop / b:>10.0f}  {'':>7}  {a / b:.2f}x")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    products()
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
