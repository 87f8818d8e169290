"""quantkit's default pipeline against llama.cpp's (`llama-imatrix` + `llama-quantize`), side by side in one run:
wall time and peak RSS of each process, their stages, and the ratio.

    .venv/bin/python benches/pipeline.py --out /tmp/pipeline                    # the real Gemma 3 270M
    .venv/bin/python benches/pipeline.py --out /tmp/pipeline --e2b /tmp/e2b     # and a random E2B-shaped checkpoint

270M: quantkit runs the README's main command without the evaluation (`quantkit compress --bits 4 gemma3-270m
--tokens 0`: default method gptq, default calibration); llama.cpp runs `llama-imatrix` on the F32 base over the same
c4 text and as many tokens (512-token chunks, the same threads), then `llama-quantize --imatrix ... Q4_K_M`, the
preset of the same size. E2B (with --e2b DIR, a checkpoint from benches/make_checkpoint.py): quantkit runs the
mission's command `quantkit compress --bits 2 e2b --from DIR --tokens 0`; llama.cpp gets an F16 GGUF of the same
checkpoint (written by quantkit, not timed: llama.cpp users convert first) and the same calibration tokens, then
`llama-quantize --imatrix ... Q2_K`. Builds of llama.cpp's tools and the F32/F16 inputs are made once, before the
clock starts. Every process's peak RSS is the OS's (os.wait4), its wall time the parent's clock.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from child import measured  # noqa: E402
from quantkit.calibration.text import documents  # noqa: E402
from quantkit.options import default_calib_tokens  # noqa: E402
from quantkit.sources import open_source  # noqa: E402
from tests.integration.llamacpp_tools import llama_cpp_tools  # noqa: E402
from tests.integration.quality import CHUNK, f32_base  # noqa: E402

QUANTKIT = Path(sys.executable).with_name("quantkit")


@dataclass
class Step:
    tool: str
    what: str
    seconds: float
    peak_rss: int  # bytes
    stages: str = ""


def timed(tool: str, what: str, cmd: list, log: Path) -> tuple[Step, str]:
    """Run cmd (benches/child.measured); the step and its output."""
    code, seconds, peak = measured(cmd, log)
    text = log.read_text(errors="replace")
    if code != 0:
        raise SystemExit(f"`{' '.join(map(str, cmd))}` failed:\n{text[-3000:]}")
    return Step(tool, what, seconds, peak), text


def quantkit_stages(output: str) -> str:
    """'capture 19 s, sensitivity 6 s, ...' from compress's "wrote ... in N s (...)" line."""
    m = re.search(r"^wrote .* in \d+ s \((.*)\)$", output, re.M)
    return m.group(1) if m else ""


def compare(name: str, quantkit_args: list[str], base: Path, preset: str, calib_tokens: int, threads: int,
            out: Path) -> list[Step]:
    out.mkdir(parents=True, exist_ok=True)
    tools = llama_cpp_tools()
    text = out / "c4.txt"
    text.write_text("\n\n".join(documents("c4")), encoding="utf-8")
    qk, output = timed("quantkit", "compress (default pipeline)",
                       [QUANTKIT, "compress", *quantkit_args, "--tokens", "0", "--threads", threads,
                        "--out", out / "quantkit"], out / "quantkit.log")
    qk.stages = quantkit_stages(output)
    imat = out / "imatrix.gguf"
    chunks = max(1, calib_tokens // CHUNK)
    im, _ = timed("llama.cpp", f"llama-imatrix ({chunks} x {CHUNK} tokens)",
                  [tools / "llama-imatrix", "-m", base, "-f", text, "-o", imat, "-c", CHUNK, "-b", CHUNK,
                   "--chunks", chunks, "-t", threads, "--no-ppl"], out / "imatrix.log")
    qz, _ = timed("llama.cpp", f"llama-quantize --imatrix {preset}",
                  [tools / "llama-quantize", "--imatrix", imat, base, out / f"llama-{preset}.gguf", preset, threads],
                  out / "quantize.log")
    steps = [qk, im, qz]
    print_table(name, steps)
    return steps


def print_table(name: str, steps: list[Step]) -> None:
    print(f"\n{name} ({os.cpu_count()} cores)")
    print(f"{'tool':<10} {'step':<42} {'wall s':>8} {'peak RSS GB':>12}")
    for s in steps:
        print(f"{s.tool:<10} {s.what:<42} {s.seconds:>8.1f} {s.peak_rss / 1e9:>12.2f}" + (f"   {s.stages}" if s.stages else ""))
    qk = sum(s.seconds for s in steps if s.tool == "quantkit")
    ll = sum(s.seconds for s in steps if s.tool == "llama.cpp")
    print(f"quantkit / llama.cpp wall time: {qk:.1f} / {ll:.1f} s = {qk / ll:.2f}x "
          f"(peak RSS {max(s.peak_rss for s in steps if s.tool == 'quantkit') / 1e9:.2f} vs "
          f"{max(s.peak_rss for s in steps if s.tool == 'llama.cpp') / 1e9:.2f} GB)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="work folder (builds, logs, the E2B F16 GGUF)")
    ap.add_argument("--e2b", type=Path, help="a random E2B-shaped checkpoint (benches/make_checkpoint.py e2b DIR)")
    ap.add_argument("--skip-270m", action="store_true", help="only the E2B comparison")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    a = ap.parse_args(argv)
    llama_cpp_tools()  # built once, before any clock
    if not a.skip_270m:
        base = f32_base()
        tokens = default_calib_tokens(open_source("gemma3-270m"))
        compare("Gemma 3 270M: --bits 4 vs llama-imatrix + llama-quantize Q4_K_M",
                ["gemma3-270m", "--bits", "4"], base, "Q4_K_M", tokens, a.threads, a.out / "270m")
    if a.e2b:
        f16 = a.out / "e2b-F16.gguf"
        if not f16.exists():
            subprocess.run([QUANTKIT, "compress", "e2b", "--from", a.e2b, "--type", "F16", "--method", "rtn",
                            "--tokens", "0", "--no-mmproj", "--out", a.out / "e2b-f16"], check=True)
            next((a.out / "e2b-f16").glob("*.gguf")).rename(f16)
        tokens = default_calib_tokens(open_source("e2b", str(a.e2b)))
        compare("Gemma 4 E2B-shaped (random weights): --bits 2 vs llama-imatrix + llama-quantize Q2_K",
                ["e2b", "--from", str(a.e2b), "--bits", "2", "--no-mmproj"], f16, "Q2_K", tokens, a.threads,
                a.out / "e2b")


if __name__ == "__main__":
    main()
