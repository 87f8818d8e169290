"""Side by side on the real Gemma 3 270M: llama.cpp's quantizations (without and with an imatrix) and quantkit's
`rtn`, `imatrix` and `gptq` builds at the same `--like` presets, every file judged by llama.cpp itself. The
machinery of benches/quality.py (which prints the table) and tests/integration/test_quality_llamacpp.py (which
asserts the targets).

* Judge (as llama.cpp's 270M anchors, llama-perplexity's convention): the built-in `wiki` text in chunks of 512 tokens, the
  first token of each replaced by BOS, each decoded from an empty cache by llama.cpp (quantkit.judge.Judge);
  positions 256..510 scored; KLD = KL(F32 base || file) over the full vocabulary in float64. The base's logits at
  the scored positions are kept on disk while the files are judged.
* llama.cpp rows: the `llama-quantize` binary at the preset, and again with `--imatrix` from `llama-imatrix` over
  the first calibration chunks of the built-in `c4` text (both tools built from the llama-cpp-python source
  package, tests/integration/llamacpp_tools.py).
* quantkit rows: `quantkit.compress.run` at `--like PRESET`, calibrated on the same `c4` text and as many tokens
  (its own seeded 512-token windows); each build runs in a fresh process, so its wall time and peak RSS are its own.
"""

from __future__ import annotations

import multiprocessing
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from quantkit.cache import cache_dir
from quantkit.calibration.text import documents, eval_chunks
from quantkit.formats.gguf_source import GGUFSource
from quantkit.judge import Judge
from quantkit.reports.metrics import EvalResult, Scorer, scored
from quantkit.sources import gemma3_270m_path

from .llamacpp import write_f32_base
from .llamacpp_tools import llama_imatrix, llama_quantize_cli

PRESETS = ("Q2_K", "Q3_K_M", "Q4_0", "IQ4_XS", "Q4_K_M", "Q8_0")
METHODS = ("rtn", "imatrix", "gptq")
CHUNK = 512
PLAIN, IMAT = "llama.cpp", "llama.cpp+imat"

# Issue 6's targets for quantkit `gptq` at `--like PRESET`, asserted by test_quality_llamacpp.py on its CI presets and
# by `benches/quality.py --check` on every preset it builds: mean KLD as a ratio to llama.cpp's file at the preset
# without an imatrix at most NO_IMATRIX[preset]; never above llama.cpp with an imatrix at NOT_ABOVE_IMATRIX; the
# file within SIZE_MATCH (relative) of llama.cpp's (the nearer of the two).
NO_IMATRIX = {"Q2_K": 0.70, "Q3_K_M": 0.75, "Q4_0": 0.85, "IQ4_XS": 0.85, "Q8_0": 1.05}
NOT_ABOVE_IMATRIX = ("Q2_K", "Q3_K_M", "IQ4_XS")
SIZE_MATCH = 1e-3
GPTQ = "quantkit gptq"


def preset_list(ap, text: str, allowed) -> list[str]:
    """The benches' --presets: comma-separated, case-insensitive, each one of `allowed` (else ap.error)."""
    presets = [p.strip().upper() for p in text.split(",") if p.strip()]
    for p in presets:
        if p not in allowed:
            ap.error(f"--presets: {p} is not one of {', '.join(allowed)}")
    return presets


def f32_base() -> Path:
    return write_f32_base(gemma3_270m_path(), cache_dir("models") / "gemma-3-270m-f32.gguf")


def c4_imatrix(base: Path, out: Path, calib_tokens: int, threads: int) -> Path:
    """`llama-imatrix` over the first calib_tokens // 512 chunks of the built-in c4 text (its documents joined
    by blank lines, as quantkit's tokenize_source joins them)."""
    text = out.with_name("c4.txt")
    text.write_text("\n\n".join(documents("c4")), encoding="utf-8")
    return llama_imatrix(base, text, out, chunks=max(1, calib_tokens // CHUNK), ctx=CHUNK, threads=threads)


@dataclass
class Build:
    preset: str
    label: str  # PLAIN, IMAT or "quantkit <method>"
    path: Path
    seconds: float
    peak_rss_mib: float | None = None  # quantkit builds: the build process's own peak

    @property
    def tool(self) -> str:
        return "quantkit" if self.label.startswith("quantkit") else "llama.cpp"


def _compress_child(base: str, out: str, options: dict):
    from quantkit.compress import CompressOptions, run

    t = time.perf_counter()
    r = run(GGUFSource(Path(base)), Path(out), CompressOptions(eval_tokens=0, progress=False, **options))
    return str(r.path), time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quantkit_build(base: Path, out: Path, preset: str, method: str, calib_tokens: int, label: str | None = None,
                   **options) -> Build:
    """`compress.run` in a fresh (spawned) process: seconds from the source opened to the file written, and that
    process's peak RSS (interpreter and libraries included). `--like preset` unless `options` name another size
    (max_size=..., bits=...); `preset` is then the row's name."""
    options = {"method": method, "calib_tokens": calib_tokens, **(options or {"like": preset})}
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        path, secs, rss = pool.submit(_compress_child, str(base), str(out), options).result()
    return Build(preset, label or f"quantkit {method}", Path(path), secs, rss)


def llama_cpp_build(base: Path, out: Path, preset: str, imatrix: Path | None, threads: int) -> Build:
    t = time.perf_counter()
    llama_quantize_cli(base, out, preset, imatrix=imatrix, threads=threads)
    return Build(preset, IMAT if imatrix else PLAIN, out, time.perf_counter() - t)


SCORED = scored(CHUNK)  # the positions whose logits are scored


def reference_logits(base: Path, chunks: np.ndarray, store: Path, threads: int):
    """The base's logits at the scored positions of every chunk, as read-only memmaps on disk, and the base's own
    result (PPL)."""
    j = Judge(base, CHUNK, threads)
    out, s = [], Scorer()
    try:
        for c, row in enumerate(chunks):
            lg = j.logits(row, SCORED)
            s.add(torch.from_numpy(lg), torch.from_numpy(row.astype(np.int64)))
            p = store / f"ref{c}.npy"
            np.save(p, lg)
            out.append(np.load(p, mmap_mode="r"))
    finally:
        j.close()
    return out, s.result()


def judge_file(path: Path, chunks: np.ndarray, ref: list[np.ndarray], threads: int) -> EvalResult:
    """Scorer result over all chunks against the reference's logits."""
    j = Judge(path, CHUNK, threads)
    s = Scorer()
    try:
        for row, r in zip(chunks, ref):
            s.add(torch.from_numpy(j.logits(row, SCORED)), torch.from_numpy(row.astype(np.int64)),
                  torch.from_numpy(np.asarray(r)))
    finally:
        j.close()
    return s.result()


@dataclass
class Comparison:
    base: Path
    base_result: EvalResult
    n_chunks: int
    n_scored: int
    calib_tokens: int
    imatrix: Path
    rows: list[tuple[Build, EvalResult, int]] = field(default_factory=list)  # (build, judged, file bytes)

    def get(self, preset: str, label: str) -> tuple[Build, EvalResult, int]:
        return next(r for r in self.rows if r[0].preset == preset and r[0].label == label)

    def kld(self, preset: str, label: str) -> float:
        return self.get(preset, label)[1].mean_kld


def compare(presets, methods, *, n_chunks: int, calib_tokens: int, threads: int, work: Path,
            budget_methods=(), log: Callable[[str], None] = print) -> Comparison:
    """Build every row into work/builds, then judge them all against the F32 base on n_chunks of wiki. For each of
    `budget_methods` also a budget-allocated build, `--max-size` the size of llama.cpp's file at the preset (row
    label "quantkit <method> budget")."""
    base = f32_base()
    builds_dir = work / "builds"
    builds_dir.mkdir(parents=True, exist_ok=True)
    chunks = eval_chunks(GGUFSource(base).tokenizer(), "wiki", n_chunks * CHUNK, CHUNK).ids
    t = time.perf_counter()
    imat = c4_imatrix(base, work / "llama-imatrix-c4.gguf", calib_tokens, threads)
    log(f"llama-imatrix: c4, {max(1, calib_tokens // CHUNK)} chunks of {CHUNK} tokens, {time.perf_counter() - t:.1f}s")

    builds: list[Build] = []
    for preset in presets:
        for im in (None, imat):
            b = llama_cpp_build(base, builds_dir / f"llamacpp-{preset}{'-imat' if im else ''}.gguf", preset, im, threads)
            builds.append(b)
            log(f"  {b.label:<17} {preset:<7} {b.seconds:7.1f}s")
        for m in methods:
            b = quantkit_build(base, builds_dir / f"quantkit-{preset}-{m}", preset, m, calib_tokens)
            builds.append(b)
            log(f"  {b.label:<17} {preset:<7} {b.seconds:7.1f}s  peak RSS {b.peak_rss_mib:,.0f} MiB")
        size = next(b.path.stat().st_size for b in builds if b.preset == preset and b.label == PLAIN)
        for m in budget_methods:
            b = quantkit_build(base, builds_dir / f"quantkit-{preset}-{m}-budget", preset, m, calib_tokens,
                               label=f"quantkit {m} budget", max_size=size)
            builds.append(b)
            log(f"  {b.label:<17} {preset:<7} {b.seconds:7.1f}s  --max-size {size:,}")

    with tempfile.TemporaryDirectory(dir=work, prefix=".ref-") as tmp:
        t = time.perf_counter()
        ref, base_res = reference_logits(base, chunks, Path(tmp), threads)
        log(f"reference: PPL {base_res.ppl:.4f} on {len(chunks)} chunks ({time.perf_counter() - t:.1f}s)")
        cmp = Comparison(base, base_res, len(chunks), len(chunks) * (CHUNK // 2 - 1), calib_tokens, imat)
        for b in builds:
            t = time.perf_counter()
            res = judge_file(b.path, chunks, ref, threads)
            cmp.rows.append((b, res, b.path.stat().st_size))
            log(f"  judged {b.label:<17} {b.preset:<7} mean KLD {res.mean_kld:.5f} ({time.perf_counter() - t:.1f}s)")
        del ref
    return cmp


@dataclass
class Target:
    preset: str
    kind: str  # "no imatrix", "imatrix", "size"
    value: float  # gptq / llama.cpp mean KLD, or the relative size difference
    limit: float

    @property
    def met(self) -> bool:
        return self.value <= self.limit

    def line(self) -> str:
        what = {"no imatrix": "gptq / llama.cpp mean KLD", "imatrix": "gptq / llama.cpp+imatrix mean KLD",
                "size": "file size off llama.cpp's"}[self.kind]
        return f"{'ok  ' if self.met else 'MISS'} {self.preset:<7} {what} {self.value:.4g} (target <= {self.limit:g})"


def targets(cmp: Comparison, preset: str) -> list[Target]:
    """Issue 6's targets at one preset, as measured in `cmp` (which must hold the preset's gptq and llama.cpp rows)."""
    out = []
    g = cmp.kld(preset, GPTQ)
    if preset in NO_IMATRIX:
        out.append(Target(preset, "no imatrix", g / cmp.kld(preset, PLAIN), NO_IMATRIX[preset]))
    if preset in NOT_ABOVE_IMATRIX:
        out.append(Target(preset, "imatrix", g / cmp.kld(preset, IMAT), 1.0))
    ours = cmp.get(preset, GPTQ)[2]
    out.append(Target(preset, "size", min(abs(ours / cmp.get(preset, lab)[2] - 1) for lab in (PLAIN, IMAT)),
                      SIZE_MATCH))
    return out
