"""The accuracy-vs-size curve on the real Gemma 3 270M: every llama.cpp preset against quantkit's budget builds at
the same sizes, every file judged by llama.cpp on held-out wiki text.

    .venv/bin/python benches/curve.py --out /tmp/curve [--chunks 16] [--presets IQ1_S,Q2_K,...] [--below 2]

* llama.cpp rows: `llama-quantize` at every preset of quantkit.recipes.PRESETS, without an imatrix and with one
  (`llama-imatrix` over the built-in c4 text, --calib-tokens of it). Presets that llama-quantize refuses without an
  imatrix are listed as refused.
* quantkit rows: `compress --max-size S` (default method gptq, the same c4 text and token count) with S the file
  size of llama.cpp+imatrix's build of each preset (presets of the same size share one build). On the 270M the 27
  presets span only 230 to 292 MB: its 640-wide rows send every 256-block type to a 32-block fallback, and the
  168 M-weight embedding takes Q5/Q6/Q8 in every preset. Below the smallest preset, --below builds evenly
  spaced down to `--bits 1.1`, the smallest budget quantkit takes (IQ1_S, 1.5625 bpw, where the rows allow 256-weight
  blocks; Q4_0 where they only allow 32-weight blocks).
* Judge (tests/integration/quality.py): chunks of 512 wiki tokens, positions 256..510 scored, KL(F32 base || file).

Prints one table sorted by file size, each preset's ratio quantkit / llama.cpp+imatrix (target <= 1) and the tensor
types of llama.cpp+imatrix's build (what the 640-wide rows leave of each preset's type), and writes
<out>/report.json (reports.results.RunReport), report.md and accuracy_vs_size.png/svg.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gguf import GGUFReader  # noqa: E402

from quantkit.calibration.text import eval_chunks  # noqa: E402
from quantkit.formats.gguf_source import GGUFSource  # noqa: E402
from quantkit.recipes import PRESETS  # noqa: E402
from quantkit.reports.charts import accuracy_vs_size, markdown_table  # noqa: E402
from quantkit.reports.results import BuildResult, RunReport  # noqa: E402
from tests.integration.quality import (CHUNK, IMAT, PLAIN, Build, c4_imatrix, f32_base, judge_file,  # noqa: E402
                                       llama_cpp_build, preset_list, quantkit_build, reference_logits)

QUANTKIT = "quantkit gptq --max-size"
SMALLEST_BITS = 1.1  # plan.BITS_RANGE's lower end


def n_params(path: Path) -> int:
    return sum(int(t.n_elements) for t in GGUFReader(path).tensors)


def type_mix(path: Path) -> str:
    """The quantized tensors' types of a GGUF, most frequent first ("Q5_0×37, IQ1_S×18, ...")."""
    counts = Counter(t.tensor_type.name for t in GGUFReader(path).tensors if len(t.shape) > 1)
    return ", ".join(f"{k}×{v}" for k, v in counts.most_common())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated llama.cpp presets (default: all)")
    ap.add_argument("--chunks", type=int, default=16, help="512-token chunks of wiki text judged (16 = 8,192 tokens)")
    ap.add_argument("--calib-tokens", type=int, default=8 * CHUNK,
                    help="c4 calibration tokens, llama-imatrix and quantkit alike (default 4,096, the CI gate's: "
                         "the 270M's mean KLD is flat from 2k to 65k, benches/calib_tokens.py)")
    ap.add_argument("--below", type=int, default=2,
                    help="quantkit builds between the smallest preset and the smallest quantkit build")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="output folder: report.json, report.md, the chart")
    a = ap.parse_args(argv)
    presets = preset_list(ap, a.presets, PRESETS)
    t_start = time.perf_counter()
    builds_dir = a.out / "builds"
    builds_dir.mkdir(parents=True, exist_ok=True)
    base = f32_base()
    imat = c4_imatrix(base, a.out / "llama-imatrix-c4.gguf", a.calib_tokens, a.threads)

    llama: list[Build] = []
    refused: dict[str, str] = {}
    for p in presets:
        try:
            llama.append(llama_cpp_build(base, builds_dir / f"llamacpp-{p}.gguf", p, None, a.threads))
        except RuntimeError as e:  # llama-quantize: "the requested quantization type needs an importance matrix"
            refused[p] = str(e).strip().splitlines()[-1][:120]
        llama.append(llama_cpp_build(base, builds_dir / f"llamacpp-{p}-imat.gguf", p, imat, a.threads))
        print(f"  llama.cpp {p:<8} {llama[-1].path.stat().st_size:>12,} bytes" + ("  (refused without imatrix)"
                                                                                   if p in refused else ""), flush=True)
    sizes = sorted((b.path.stat().st_size, b.preset) for b in llama if b.label == IMAT)

    # quantkit: one build per distinct preset size, then the builds below the smallest preset
    quantkit: list[Build] = []
    targets: list[tuple[int, str]] = []  # (--max-size, row name)
    for size, p in sizes:
        if targets and targets[-1][0] == size:
            continue
        targets.append((size, p))
    for size, p in targets:
        quantkit.append(quantkit_build(base, builds_dir / f"quantkit-{p}", p, "gptq", a.calib_tokens,
                                       label=QUANTKIT, max_size=size))
        print(f"  quantkit --max-size {size:>12,} ({p}) {quantkit[-1].seconds:6.1f} s", flush=True)
    smallest = quantkit_build(base, builds_dir / "quantkit-smallest", f"--bits {SMALLEST_BITS}", "gptq",
                              a.calib_tokens, label="quantkit gptq --bits", bits=SMALLEST_BITS)
    lo, hi = smallest.path.stat().st_size, sizes[0][0]
    for i in range(1, a.below + 1):
        size = hi - (hi - lo) * i // (a.below + 1)
        quantkit.append(quantkit_build(base, builds_dir / f"quantkit-below-{i}", f"below {i}", "gptq",
                                       a.calib_tokens, label=QUANTKIT, max_size=size))
    quantkit.append(smallest)

    chunks = eval_chunks(GGUFSource(base).tokenizer(), "wiki", a.chunks * CHUNK, CHUNK).ids
    results = {}
    ref_dir = a.out / ".ref"
    ref_dir.mkdir(exist_ok=True)
    try:
        ref, base_res = reference_logits(base, chunks, ref_dir, a.threads)
        for b in llama + quantkit:
            results[b.path] = judge_file(b.path, chunks, ref, a.threads)
            print(f"  judged {b.label:<24} {b.preset:<10} mean KLD {results[b.path].mean_kld:.5f}", flush=True)
        del ref
    finally:
        shutil.rmtree(ref_dir)

    n_scored = len(chunks) * (CHUNK // 2 - 1)
    print(f"\nGemma 3 270M; {len(chunks)} chunks of wiki ({n_scored} scored tokens), judge llama.cpp; calibration "
          f"c4:{a.calib_tokens}; F32 base PPL {base_res.ppl:.4f}")
    hdr = f"{'file bytes':>12}  {'build':<34} {'PPL':>9} {'mean KLD':>9} {'p99 KLD':>9} {'top-1 %':>8}"
    print(hdr + "\n" + "-" * len(hdr))
    everything = sorted(llama + quantkit, key=lambda b: (b.path.stat().st_size, b.label))
    for b in everything:
        r = results[b.path]
        name = f"{b.label} {b.preset}" if b.tool == "llama.cpp" else f"{b.label} ({b.preset})"
        print(f"{b.path.stat().st_size:>12,}  {name:<34} {r.ppl:>9.4f} {r.mean_kld:>9.5f} {r.p99_kld:>9.5f} "
              f"{r.top1:>8.2f}")
    for p, why in refused.items():
        print(f"{'':>12}  llama.cpp {p:<24} refused without an imatrix: {why}")

    print("\nat each preset's size: quantkit --max-size (at most that size) / llama.cpp+imatrix, mean KLD")
    missed = 0
    for size, p in sizes:
        qk = max((b for b in quantkit if b.label == QUANTKIT and b.path.stat().st_size <= size),
                 key=lambda b: b.path.stat().st_size)
        ratio = results[qk.path].mean_kld / results[next(b.path for b in llama if b.preset == p and b.label == IMAT)].mean_kld
        missed += ratio > 1
        print(f"  {p:<8} {size:>12,}  quantkit {qk.path.stat().st_size:>12,} ({qk.preset:<8})  {ratio:6.3f}  "
              f"{'ok' if ratio <= 1 else 'MISS'}")
    print("\nllama.cpp+imatrix's tensor types at each preset (the 270M's 640-wide rows take 32-weight fallbacks)")
    for size, p in sizes:
        print(f"  {p:<8} {type_mix(next(b.path for b in llama if b.preset == p and b.label == IMAT))}")
    print(f"  quantkit smallest ({smallest.preset}): {type_mix(smallest.path)}")

    report = RunReport(model=str(base), text="wiki", n_tokens=n_scored, judge="llama.cpp",
                       reference_ppl=base_res.ppl)
    params = n_params(base)
    for b in everything:
        r, size = results[b.path], b.path.stat().st_size
        name = f"{b.label} {b.preset}" if b.tool == "llama.cpp" else f"quantkit {b.preset}"
        report.builds.append(BuildResult(name, b.tool, size, 8 * size / params, r.ppl, r.mean_kld, r.p99_kld,
                                         r.top1))
    report.save(a.out)
    (a.out / "report.md").write_text(markdown_table([report]), encoding="utf-8")
    accuracy_vs_size([report], a.out / "accuracy_vs_size",
                     title="Gemma 3 270M: every llama.cpp preset and quantkit --max-size at its size")
    shutil.rmtree(builds_dir)
    print(f"\n{missed} of {len(sizes)} presets missed; wall {time.perf_counter() - t_start:.0f} s")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
