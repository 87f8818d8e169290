"""Budget allocation against fixed mixing rules on the real Gemma 3 270M, judged by llama.cpp.

At the file size of llama.cpp's own build of each preset (default Q2_K and IQ4_XS), four files are compared:
llama.cpp without and with an imatrix (`llama-quantize`, `llama-imatrix` over the built-in c4 text), quantkit's
`--like PRESET` build (llama.cpp's per-tensor type choices, quantkit's method) and quantkit's budget-allocated build
(`--max-size` set to llama.cpp's file size: the knapsack over measured per-tensor errors picks the types). Both
quantkit builds use the same method and calibration, so the difference between them is the allocation alone.

    .venv/bin/python benches/budget.py --out /tmp/budget [--presets Q2_K,IQ4_XS] [--chunks 32] [--calib-tokens 16384]

Prints one table (file bytes, PPL, mean / p99 KLD, top-1) and the ratios budget / --like and budget / llama.cpp+imat.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.quality import CHUNK, IMAT, PLAIN, PRESETS, compare, preset_list  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="Q2_K,IQ4_XS", help="comma-separated llama.cpp presets whose sizes to match")
    ap.add_argument("--method", default="gptq", choices=("rtn", "imatrix", "gptq"), help="quantkit's method, both builds")
    ap.add_argument("--chunks", type=int, default=32, help="512-token chunks of wiki text judged (32 = 16,384 tokens)")
    ap.add_argument("--calib-tokens", type=int, default=32 * CHUNK, help="c4 calibration tokens (llama-imatrix too)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="work folder (builds are removed at the end)")
    a = ap.parse_args(argv)
    presets = preset_list(ap, a.presets, PRESETS)
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cmp = compare(presets, (a.method,), n_chunks=a.chunks, calib_tokens=a.calib_tokens, threads=a.threads,
                  work=a.out, budget_methods=(a.method,), log=lambda s: print(s, flush=True))

    like, budget = f"quantkit {a.method}", f"quantkit {a.method} budget"
    print(f"\nGemma 3 270M; {cmp.n_chunks} chunks of wiki ({cmp.n_scored} scored tokens), judge llama.cpp; "
          f"calibration c4:{cmp.calib_tokens}; F32 base PPL {cmp.base_result.ppl:.4f}")
    hdr = f"{'size of':<8} {'build':<32} {'bytes':>12} {'PPL':>9} {'mean KLD':>9} {'p99 KLD':>9} {'top-1 %':>8}"
    print(hdr + "\n" + "-" * len(hdr))
    for preset in presets:
        for label, name in ((PLAIN, PLAIN), (IMAT, IMAT), (like, f"{like} --like"), (budget, f"{budget} --max-size")):
            _, r, size = cmp.get(preset, label)
            print(f"{preset:<8} {name:<32} {size:>12,} {r.ppl:>9.4f} {r.mean_kld:>9.5f} {r.p99_kld:>9.5f} "
                  f"{r.top1:>8.2f}")
    print(f"\nmean KLD ratios of the budget build ({a.method}, --max-size = llama.cpp's file size)")
    print(f"  {'preset':<8} {'/ --like':>9} {'/ llama.cpp+imat':>17} {'/ llama.cpp':>12}")
    for preset in presets:
        k = cmp.kld(preset, budget)
        print(f"  {preset:<8} {k / cmp.kld(preset, like):>9.3f} {k / cmp.kld(preset, IMAT):>17.3f} "
              f"{k / cmp.kld(preset, PLAIN):>12.3f}")
    print(f"\nwall {time.perf_counter() - t0:.0f} s")
    shutil.rmtree(a.out / "builds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
