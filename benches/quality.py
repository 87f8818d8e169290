"""Quality bench on the real Gemma 3 270M: llama.cpp's quantizations (without and with an imatrix) against quantkit's
`rtn`, `imatrix` and `gptq` builds at the same `--like` presets, every file judged by llama.cpp itself.

    .venv/bin/python benches/quality.py --out /tmp/quality                       # full: 32 chunks, 6 presets
    .venv/bin/python benches/quality.py --presets Q2_K,Q4_0 --chunks 4 --calib-tokens 8192 --out /tmp/q
    # what tests/integration/test_quality_llamacpp.py asserted on all five target presets before CI kept Q2_K:
    .venv/bin/python benches/quality.py --presets Q2_K,Q3_K_M,Q4_0,IQ4_XS,Q8_0 --methods gptq --chunks 8 \
        --calib-tokens 16384 --check --out /tmp/quality-ci

The llama.cpp rows come from its own `llama-quantize` binary, the +imat rows with an imatrix made by its own
`llama-imatrix` over the built-in c4 text (both built once from the llama-cpp-python 0.3.36 source package into
the cache); quantkit calibrates on the same c4 text and as many tokens. The machinery (and the judge's
convention) is tests/integration/quality.py, shared with tests/integration/test_quality_llamacpp.py.

Prints one table, the gptq KLD ratios to llama.cpp, and each quantkit gptq build's wall time and peak RSS, then
issue 6's targets at every preset built (tests/integration/quality.py NO_IMATRIX, NOT_ABOVE_IMATRIX, SIZE_MATCH;
`ok` or `MISS`); writes <out>/report.json (reports.results.RunReport), report.md, accuracy_vs_size.png/svg and
kld_by_preset.png/svg. With --check it exits 1 when a target is missed, as the integration test fails.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gguf import GGUFReader  # noqa: E402

from quantkit.reports.charts import accuracy_vs_size, kld_by_preset, markdown_table  # noqa: E402
from quantkit.reports.results import BuildResult, RunReport  # noqa: E402
from tests.integration.quality import CHUNK, IMAT, METHODS, PLAIN, PRESETS, compare, preset_list, targets  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated --like presets")
    ap.add_argument("--methods", default=",".join(METHODS), help="quantkit methods (rtn, imatrix, gptq)")
    ap.add_argument("--chunks", type=int, default=32, help="512-token chunks of wiki text judged (32 = 16,384 tokens)")
    ap.add_argument("--calib-tokens", type=int, default=128 * CHUNK,
                    help="c4 calibration tokens, for llama-imatrix and quantkit alike (default 128 x 512)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="output folder: report.json, report.md, charts, builds")
    ap.add_argument("--keep-files", action="store_true", help="keep the quantized GGUFs in <out>/builds")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when a gptq build misses one of issue 6's targets (needs --methods with gptq)")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    presets = preset_list(ap, a.presets, PRESETS)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            ap.error(f"--methods: {m} is not one of {', '.join(METHODS)}")
    if a.check and "gptq" not in methods:
        ap.error("--check judges the gptq builds: add gptq to --methods")
    a.out.mkdir(parents=True, exist_ok=True)
    print(f"Gemma 3 270M; judge llama.cpp, {a.chunks} chunks of wiki; calibration c4:{a.calib_tokens}; "
          f"{os.cpu_count()} cores, {a.threads} threads", flush=True)

    cmp = compare(presets, methods, n_chunks=a.chunks, calib_tokens=a.calib_tokens, threads=a.threads, work=a.out,
                  log=lambda s: print(s, flush=True))

    params = sum(int(t.n_elements) for t in GGUFReader(cmp.base).tensors)
    report = RunReport(model=str(cmp.base), text="wiki", n_tokens=cmp.n_scored, judge="llama.cpp",
                       reference_ppl=cmp.base_result.ppl)
    for b, res, size in cmp.rows:
        report.builds.append(BuildResult(name=f"{b.label} {b.preset}", tool=b.tool, file_bytes=size,
                                         bpw=8 * size / params, ppl=res.ppl, mean_kld=res.mean_kld,
                                         p99_kld=res.p99_kld, top1=res.top1, path=str(b.path)))
    report.save(a.out)
    (a.out / "report.md").write_text(markdown_table([report]))
    accuracy_vs_size([report], a.out / "accuracy_vs_size",
                     title=f"Gemma 3 270M, wiki {cmp.n_scored} tokens, llama.cpp judge")
    kld_by_preset(report, a.out / "kld_by_preset", title=f"Gemma 3 270M: mean KLD against the F32 base at "
                  f"llama.cpp's file sizes (wiki, {cmp.n_scored} scored tokens, llama.cpp judge)")

    hdr = (f"{'preset':<8} {'build':<17} {'bytes':>12} {'PPL':>9} {'mean KLD':>9} {'p99 KLD':>9} {'top-1 %':>8} "
           f"{'build s':>8}")
    print(f"\n{cmp.n_chunks} chunks of wiki, {cmp.n_scored} scored tokens; calibration c4:{cmp.calib_tokens}")
    print(hdr + "\n" + "-" * len(hdr))
    print(f"{'F32':<8} {'base':<17} {cmp.base.stat().st_size:>12,} {cmp.base_result.ppl:>9.4f} {0:>9.5f} "
          f"{0:>9.5f} {100:>8.2f} {'-':>8}")
    for b, res, size in cmp.rows:
        print(f"{b.preset:<8} {b.label:<17} {size:>12,} {res.ppl:>9.4f} {res.mean_kld:>9.5f} {res.p99_kld:>9.5f} "
              f"{res.top1:>8.2f} {b.seconds:>8.1f}")

    print("\nquantkit file bytes vs llama.cpp's at the same preset (nearest of no-imatrix / imatrix):")
    worst = 0.0
    for b, _, size in cmp.rows:
        if b.tool == "quantkit":
            dev = min(abs(size / cmp.get(b.preset, lab)[2] - 1) for lab in (PLAIN, IMAT))
            worst = max(worst, dev)
            if dev > 1e-3:
                print(f"  {b.preset} {b.label}: {100 * dev:.3f}% off (over 0.1%)")
    print(f"  largest deviation {100 * worst:.4f}%")
    if "gptq" in methods:
        print("\nquantkit gptq: mean KLD ratio to llama.cpp, build wall time, peak RSS")
        print(f"  {'preset':<8} {'/ no imatrix':>12} {'/ imatrix':>10} {'wall s':>8} {'peak RSS MiB':>13}")
        for preset in presets:
            g, _, _ = cmp.get(preset, "quantkit gptq")
            k = cmp.kld(preset, "quantkit gptq")
            print(f"  {preset:<8} {k / cmp.kld(preset, PLAIN):>12.3f} {k / cmp.kld(preset, IMAT):>10.3f} "
                  f"{g.seconds:>8.1f} {g.peak_rss_mib:>13,.0f}")
    missed = []
    if "gptq" in methods:
        print("\nissue 6 targets, quantkit gptq:")
        for preset in presets:
            for t in targets(cmp, preset):
                print("  " + t.line())
                if not t.met:
                    missed.append(t)
        print(f"  {len(missed)} missed")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nwall {time.perf_counter() - t_start:.1f}s, bench process peak RSS {rss:,.0f} MiB; "
          f"report: {a.out / 'report.json'}")
    if not a.keep_files:
        shutil.rmtree(a.out / "builds")
        for b in report.builds:
            b.path = None
        report.save(a.out)
    return 1 if a.check and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
