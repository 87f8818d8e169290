"""How many calibration tokens the default build needs: the real Gemma 3 270M's `--bits 4` build (the README's main
command: budget allocator, GPTQ) at calibration sizes from 2,048 to 65,536 c4 tokens, every file judged by llama.cpp
against the F32 base on held-out wiki text. Marks the default (quantkit.options.default_calib_tokens) of the 270M
and the calibration size the same rule gives Gemma 4 E2B.

    .venv/bin/python benches/calib_tokens.py --out /tmp/calib [--tokens 2048,4096,...] [--chunks 16]

Prints, per size: the build's wall time and peak RSS, file bytes, PPL, mean KLD and its ratio to the 65,536-token
build's. The file sizes differ a little: the budget allocator's choice depends on the measured errors. A GGUF already
in OUT/calibN (an interrupted run's) is judged instead of rebuilt (its time is then not known: nan).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quantkit.calibration.text import eval_chunks  # noqa: E402
from quantkit.formats.gguf_source import GGUFSource  # noqa: E402
from quantkit.options import CALIB_TOKENS, CALIB_WEIGHT_TOKENS, MIN_CALIB_TOKENS, default_calib_tokens  # noqa: E402
from tests.integration.quality import (CHUNK, Build, f32_base, judge_file, quantkit_build,  # noqa: E402
                                      reference_logits)

SIZES = (2048, 4096, 8192, 16384, 32768, 65536)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default=",".join(map(str, SIZES)), help="comma-separated calibration sizes")
    ap.add_argument("--chunks", type=int, default=16, help="512-token chunks of wiki text judged (16 = 8,192 tokens)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="work folder (builds are removed at the end)")
    a = ap.parse_args(argv)
    sizes = sorted(int(t) for t in a.tokens.split(","))
    a.out.mkdir(parents=True, exist_ok=True)
    base = f32_base()
    src = GGUFSource(base)
    default = default_calib_tokens(src)
    rows = []
    for n in sizes:
        done = sorted((a.out / f"calib{n}").glob("*.gguf"))
        if done:  # a build an interrupted run of this bench left (or the same command's, e.g. benches/pipeline.py's)
            b = Build(f"{n}", "quantkit gptq", done[0], float("nan"), float("nan"))
            print(f"reusing {done[0]}", flush=True)
        else:
            b = quantkit_build(base, a.out / f"calib{n}", f"{n}", "gptq", n, bits=4)
            print(f"built --bits 4 --calib-tokens {n}: {b.seconds:.1f} s, peak RSS {b.peak_rss_mib:,.0f} MiB", flush=True)
        rows.append((n, b))
    chunks = eval_chunks(src.tokenizer(), "wiki", a.chunks * CHUNK, CHUNK).ids
    with tempfile.TemporaryDirectory(dir=a.out, prefix=".ref-") as tmp:
        ref, base_res = reference_logits(base, chunks, Path(tmp), a.threads)
        judged = [(n, b, judge_file(b.path, chunks, ref, a.threads)) for n, b in rows]
        del ref
    top = next((r.mean_kld for n, _, r in judged if n == CALIB_TOKENS), judged[-1][2].mean_kld)
    print(f"\nGemma 3 270M, --bits 4 (gptq); judge llama.cpp, {len(chunks)} chunks of wiki "
          f"({len(chunks) * (CHUNK // 2 - 1)} scored tokens); F32 base PPL {base_res.ppl:.4f}")
    hdr = (f"{'calib tokens':>12} {'build s':>8} {'peak RSS MiB':>13} {'bytes':>12} {'PPL':>9} {'mean KLD':>9} "
           f"{'/ 65,536':>9}")
    print(hdr + "\n" + "-" * len(hdr))
    for n, b, r in judged:
        mark = "  <- default (270M)" if n == default else ""
        print(f"{n:>12,} {b.seconds:>8.1f} {b.peak_rss_mib:>13,.0f} {b.path.stat().st_size:>12,} {r.ppl:>9.4f} "
              f"{r.mean_kld:>9.5f} {r.mean_kld / top:>9.3f}{mark}")
    print(f"\ndefault rule: min({CALIB_TOKENS:,}, {CALIB_WEIGHT_TOKENS:.3g} / linear weights per token), at least "
          f"{MIN_CALIB_TOKENS:,}: the 270M gets {default:,}")
    for n, b in rows:
        shutil.rmtree(b.path.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
