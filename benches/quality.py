"""Quality bench on the real Gemma 3 270M: llama.cpp's quantizations (without and with an imatrix) against quantkit's
`rtn`, `imatrix` and `gptq` builds at the same `--like` presets, every file judged by llama.cpp itself.

    .venv/bin/python benches/quality.py --out /tmp/quality                       # full: 32 chunks, 6 presets
    .venv/bin/python benches/quality.py --presets Q2_K,Q4_0 --chunks 4 --calib-tokens 8192 --out /tmp/q

Convention (anchors-270m.md, llama-perplexity's): the built-in `wiki` text, chunks of 512 tokens with the first
token replaced by BOS, each decoded from an empty cache by llama.cpp (quantkit.judge.Judge); positions 256..510
scored; KLD = KL(F32 base || file) over the full vocabulary in float64. The reference logits come from llama.cpp
running the F32 base GGUF and are kept on disk (only the scored positions) while the files are judged.

The llama.cpp +imat rows use an imatrix from quantkit's capture over the built-in c4 text (the same calibration
tokens quantkit's own builds use), written as a llama.cpp GGUF imatrix and handed to `llama_model_quantize` the
way tests/integration/test_recipes_llamacpp.py does.

Prints one table and writes <out>/report.json (reports.results.RunReport), report.md and accuracy_vs_size.png/svg.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quantkit.cache import cache_dir  # noqa: E402
from quantkit.calibration.capture import calibration_ids, capture  # noqa: E402
from quantkit.calibration.imatrix import from_stats, read_imatrix, write_imatrix  # noqa: E402
from quantkit.calibration.text import eval_chunks  # noqa: E402
from quantkit.compress import CompressOptions, run as compress_run  # noqa: E402
from quantkit.formats import names  # noqa: E402
from quantkit.formats.gguf_source import GGUFSource  # noqa: E402
from quantkit.judge import Judge  # noqa: E402
from quantkit.reports.charts import accuracy_vs_size, markdown_table  # noqa: E402
from quantkit.reports.metrics import Scorer  # noqa: E402
from quantkit.reports.results import BuildResult, RunReport  # noqa: E402
from quantkit.sources import gemma3_270m_path  # noqa: E402
from tests.integration.llamacpp import llama_quantize, write_f32_base  # noqa: E402

PRESETS = ("Q2_K", "Q3_K_M", "Q4_0", "IQ4_XS", "Q4_K_M", "Q8_0")
METHODS = ("rtn", "imatrix", "gptq")
CHUNK = 512


def f32_base() -> Path:
    return write_f32_base(gemma3_270m_path(), cache_dir("models") / "gemma-3-270m-f32.gguf")


def reference_logits(base: Path, chunks: np.ndarray, store: Path, threads: int):
    """The base's logits at the scored positions 256..510 of every chunk, as read-only memmaps on disk, and the
    base's own result (PPL)."""
    j = Judge(base, n_ctx=CHUNK, threads=threads)
    out, s = [], Scorer()
    try:
        for c, row in enumerate(chunks):
            lg = j.logits(row)
            s.add(torch.from_numpy(lg), torch.from_numpy(row.astype(np.int64)))
            p = store / f"ref{c}.npy"
            np.save(p, lg[CHUNK // 2: CHUNK - 1])
            out.append(np.load(p, mmap_mode="r"))
    finally:
        j.close()
    return out, s.result()


def judge_file(path: Path, chunks: np.ndarray, ref: list[np.ndarray], threads: int):
    """Scorer result over all chunks; the Scorer sees only the second half (its own convention) of each chunk."""
    j = Judge(path, n_ctx=CHUNK, threads=threads)
    s = Scorer()
    half = CHUNK // 2
    try:
        for row, r in zip(chunks, ref):
            lg = j.logits(row)
            full_ref = np.zeros_like(lg)  # only positions half..T-2 are read by the Scorer
            full_ref[half: CHUNK - 1] = r
            s.add(torch.from_numpy(lg), torch.from_numpy(row.astype(np.int64)), torch.from_numpy(full_ref))
    finally:
        j.close()
    return s.result()


def n_params(path: Path) -> int:
    from gguf import GGUFReader

    return int(sum(int(t.n_elements) for t in GGUFReader(path).tensors))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated --like presets")
    ap.add_argument("--methods", default=",".join(METHODS), help="quantkit methods (rtn, imatrix, gptq)")
    ap.add_argument("--chunks", type=int, default=32, help="512-token chunks of wiki text (32 = 16,384 tokens)")
    ap.add_argument("--calib-tokens", type=int, default=128 * 512, help="c4 calibration tokens (quantkit and imatrix)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="output folder: report.json, report.md, charts, builds")
    ap.add_argument("--keep-files", action="store_true", help="keep the quantized GGUFs in <out>/builds")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    presets = [p.strip().upper() for p in a.presets.split(",") if p.strip()]
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    for p in presets:
        if p not in PRESETS:
            ap.error(f"--presets: {p} is not one of {', '.join(PRESETS)}")
    builds_dir = a.out / "builds"
    builds_dir.mkdir(parents=True, exist_ok=True)

    base = f32_base()
    src = GGUFSource(base)
    chunks = eval_chunks(src.tokenizer(), "wiki", a.chunks * CHUNK, CHUNK).ids
    n_tok = len(chunks) * (CHUNK // 2 - 1)
    params = n_params(base)
    print(f"base {base} ({params:,} params); {len(chunks)} chunks of wiki ({n_tok} scored tokens); "
          f"calibration c4:{a.calib_tokens}", flush=True)

    # imatrix for llama.cpp: quantkit's capture over the same c4 tokens, through a llama.cpp GGUF imatrix file
    t = time.perf_counter()
    ids = calibration_ids(src.tokenizer(), "c4", max(1, a.calib_tokens // CHUNK), CHUNK)
    cap = capture(src.spec, src, ids, progress=False)
    imat_path = write_imatrix(a.out / "imatrix.gguf", from_stats(cap.stats, datasets=["c4"], chunk_size=CHUNK))
    imat = {names.to_gguf(n) or n: v for n, v in read_imatrix(imat_path).importance().items()}
    del cap
    print(f"imatrix: {len(imat)} tensors, {time.perf_counter() - t:.1f}s", flush=True)

    rows: list[tuple[str, str, str, Path, float]] = []  # (preset, label, tool, path, build seconds)
    for preset in presets:
        for label, importance in (("llama.cpp", None), ("llama.cpp+imat", imat)):
            dst = builds_dir / f"llamacpp-{preset}{'-imat' if importance else ''}.gguf"
            t = time.perf_counter()
            llama_quantize(base, dst, preset, importance, a.threads)
            rows.append((preset, label, "llama.cpp", dst, time.perf_counter() - t))
            print(f"  built {dst.name} in {rows[-1][4]:.1f}s", flush=True)
        for m in methods:
            t = time.perf_counter()
            out = builds_dir / f"quantkit-{preset}-{m}"
            r = compress_run(src, out, CompressOptions(like=preset, method=m, eval_tokens=0,
                                                       calib_tokens=a.calib_tokens, progress=False))
            rows.append((preset, f"quantkit {m}", "quantkit", r.path, time.perf_counter() - t))
            print(f"  built {r.path.name} in {rows[-1][4]:.1f}s", flush=True)

    with tempfile.TemporaryDirectory(dir=a.out, prefix=".ref-") as tmp:
        t = time.perf_counter()
        ref, base_res = reference_logits(base, chunks, Path(tmp), a.threads)
        print(f"reference: PPL {base_res.ppl:.4f} ({time.perf_counter() - t:.1f}s)", flush=True)
        report = RunReport(model=str(base), text="wiki", n_tokens=n_tok, judge="llama.cpp", reference_ppl=base_res.ppl)
        results = {}
        for preset, label, tool, path, secs in rows:
            res = judge_file(path, chunks, ref, a.threads)
            size = path.stat().st_size
            results[preset, label] = (res, size, secs)
            report.builds.append(BuildResult(name=f"{label} {preset}", tool=tool, file_bytes=size,
                                             bpw=8 * size / params, ppl=res.ppl, mean_kld=res.mean_kld,
                                             p99_kld=res.p99_kld, top1=res.top1, path=str(path)))
        del ref

    report.save(a.out)
    (a.out / "report.md").write_text(markdown_table([report]))
    accuracy_vs_size([report], a.out / "accuracy_vs_size", title=f"Gemma 3 270M, wiki {n_tok} tokens, llama.cpp judge")

    hdr = f"{'preset':<8} {'build':<17} {'bytes':>12} {'PPL':>9} {'mean KLD':>9} {'p99 KLD':>9} {'top-1 %':>8} {'build s':>8}"
    print("\n" + hdr + "\n" + "-" * len(hdr))
    print(f"{'F32':<8} {'base':<17} {base.stat().st_size:>12,} {base_res.ppl:>9.4f} {0:>9.5f} {0:>9.5f} {100:>8.2f} {'-':>8}")
    for preset, label, _, _, _ in rows:
        res, size, secs = results[preset, label]
        print(f"{preset:<8} {label:<17} {size:>12,} {res.ppl:>9.4f} {res.mean_kld:>9.5f} {res.p99_kld:>9.5f} "
              f"{res.top1:>8.2f} {secs:>8.1f}")
    if "gptq" in methods:
        print("\nKLD ratio quantkit gptq / llama.cpp:")
        for preset in presets:
            g = results[preset, "quantkit gptq"][0].mean_kld
            plain = results[preset, "llama.cpp"][0].mean_kld
            im = results[preset, "llama.cpp+imat"][0].mean_kld
            print(f"  {preset:<8} / no imatrix {g / plain:6.3f}   / imatrix {g / im:6.3f}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nwall {time.perf_counter() - t_start:.1f}s, peak RSS {rss:,.0f} MiB; report: {a.out / 'report.json'}")
    if not a.keep_files:
        shutil.rmtree(builds_dir)
        for b in report.builds:
            b.path = None
        report.save(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
