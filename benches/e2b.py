"""The sub-1.5 GB E2B build: `quantkit compress --bits 2 e2b --from DIR` on a checkpoint with the real E2B shapes
and release layout, then llama.cpp loads the file, checks its logits are finite and generates 16 tokens.

    .venv/bin/python benches/make_checkpoint.py e2b /tmp/e2b          # random weights, real shapes (9.3 GB)
    .venv/bin/python benches/e2b.py /tmp/e2b --out /tmp/e2b-build [--max-size 1.4GB] [--method M] [--calib-tokens N] \
        [--runtime OTHER.gguf ...]

Prints the file's size by tensor group, the compress command's wall time and its peak RSS (the child process's
maximum resident set, benches/child.py), and llama.cpp's check; then the towers' mmproj that compress wrote beside
it (F16), the size the same towers take at --mmproj-type Q8_0 (planned exactly, not written) and the on-device total
of text + mmproj. The targets of the issue: at most 1,500,000,000 bytes
(or within 1% under --max-size), at most 20 minutes and 8 GB on 2 cores.

With no --method / --calib-tokens the command runs with quantkit's defaults (gptq; the calibration size that
quantkit.options.default_calib_tokens gives E2B). Last, llama.cpp's own memory while it runs the build (and each
--runtime file, e.g. llama.cpp's Q2_K / IQ2_M presets of the same checkpoint): benches/runtime_memory.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import runtime_memory  # noqa: E402
from child import run_compress  # noqa: E402
from quantkit.inspect import inspect_path  # noqa: E402

SIZE_LIMIT = 1_500_000_000


def llama_cpp_check(path: Path, n_generate: int = 16) -> tuple[bool, list[int]]:
    """llama.cpp loads the build, its logits on a prompt are finite, and it generates `n_generate` tokens."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=256, n_batch=64, logits_all=True, n_threads=os.cpu_count(), verbose=False)
    try:
        prompt = llm.tokenize(b"The capital of France is", add_bos=True)
        llm.eval(prompt)
        finite = bool(np.isfinite(np.asarray(llm.scores[: len(prompt)])).all())
        llm.reset()
        generated = []
        for token in llm.generate(prompt, top_k=1, temp=0.0):  # greedy; random weights need not stop at EOS
            generated.append(int(token))
            if len(generated) == n_generate:
                break
        return finite, generated
    finally:
        llm.close()


def print_mmproj(checkpoint: Path, out: Path, text_bytes: int) -> None:
    from quantkit.formats.hf_source import HFSource
    from quantkit.formats.mmproj import plan_mmproj
    from quantkit.towers import file_bytes

    written = sorted(out.glob("mmproj-*.gguf"))
    if not written:
        print("mmproj      none written (a checkpoint without towers, or made with --stub-towers)")
        return
    f16 = written[0].stat().st_size
    q8 = file_bytes(plan_mmproj(HFSource(checkpoint), "Q8_0"))
    print(f"mmproj      {written[0].name}: {f16:,} bytes (F16); at --mmproj-type Q8_0: {q8:,} bytes")
    print(f"on device   text {text_bytes:,} + mmproj F16 {f16:,} = {text_bytes + f16:,} bytes; "
          f"with the Q8_0 mmproj {text_bytes + q8:,}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path, help="directory written by benches/make_checkpoint.py e2b")
    ap.add_argument("--out", type=Path, default=Path("/tmp/e2b-build"))
    ap.add_argument("--max-size", help="build under this size instead of --bits 2 (e.g. 1.4GB)")
    ap.add_argument("--method", help="quantkit compress --method (default: compress's)")
    ap.add_argument("--calib-tokens", help="quantkit compress --calib-tokens (default: compress's)")
    ap.add_argument("--runtime", nargs="*", type=Path, default=[],
                    help="other GGUFs whose llama.cpp runtime memory to print beside the build's")
    args = ap.parse_args()

    size_args = ["--max-size", args.max_size] if args.max_size else ["--bits", "2"]
    extra = [*(["--method", args.method] if args.method else []),
             *(["--calib-tokens", args.calib_tokens] if args.calib_tokens else [])]
    path, seconds, peak_gb = run_compress("e2b", args.checkpoint, args.out, [*size_args, "--tokens", "0", *extra])
    inv = inspect_path(path)
    print(f"\n{path}")
    print(f"{'group':<12}{'params':>16}{'bytes':>16}{'bpw':>8}")
    for g, t in inv.totals().items():
        print(f"{g:<12}{t['params']:>16,}{t['bytes']:>16,}{t['bpw'] or 0:>8.3f}")
    limit = SIZE_LIMIT
    if args.max_size:
        from quantkit.cli import parse_size

        limit = parse_size(args.max_size)
    print(f"{'file':<12}{inv.n_params:>16,}{inv.file_bytes:>16,}{8 * inv.file_bytes / inv.n_params:>8.3f}"
          f"   limit {limit:,}: {'OK' if inv.file_bytes <= limit else 'OVER'} ({100 * inv.file_bytes / limit:.2f}% of it)")
    print(f"wall time   {seconds / 60:.1f} min   (target <= 20 min on 2 cores)")
    print(f"peak RSS    {peak_gb:.2f} GB       (target <= 8 GB)")
    print_mmproj(args.checkpoint, args.out, inv.file_bytes)
    finite, generated = llama_cpp_check(path)
    print(f"llama.cpp   loaded; prompt logits finite: {finite}; generated {len(generated)} tokens: {generated}")
    runtime_memory.print_table([(p.name, runtime_memory.measure_both(p)) for p in [path, *args.runtime]])
    ok = inv.file_bytes <= limit and finite and len(generated) == 16
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
