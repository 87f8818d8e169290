"""Peak memory of planning and building a large model is flat in its depth: the real 31B (or 26B-A4B) shapes with
a few layers, at two layer counts, each built by `quantkit compress` in a child process whose own peak RSS is read
(benches/child.py).

    .venv/bin/python benches/scale.py 31b --layers 2,4 --work /tmp/scale

Each checkpoint is written once by benches/make_checkpoint.py (random weights, release layout, bf16 shards) and
kept in --work. The build is `--bits 4 --method imatrix --calib-tokens 512 --tokens 0`: the full pipeline
(calibration capture, sensitivity sampling, the allocator, the streaming writer) on one calibration sequence,
so the bench measures memory, not calibration depth. Target (issue 7): below 12 GB, and no growth with layers
beyond the one block's weights the pipeline holds.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from child import run_compress

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv/bin/python")


def build(model: str, checkpoint: Path, out: Path) -> tuple[float, float, int]:
    """(peak RSS in GB, wall seconds, file bytes) of one compress run in a fresh child process."""
    gguf, seconds, peak = run_compress(model, checkpoint, out, ["--bits", "4", "--method", "imatrix",
                                                                 "--calib-tokens", "512", "--tokens", "0"])
    return peak, seconds, gguf.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=["31b", "26b-a4b"])
    ap.add_argument("--layers", default="2,4", help="comma-separated layer counts")
    ap.add_argument("--work", type=Path, default=Path("/tmp/quantkit-scale"))
    args = ap.parse_args()
    counts = sorted(int(n) for n in args.layers.split(","))
    rows = []
    for n in counts:
        ckpt = args.work / f"{args.model}-l{n}"
        if not (ckpt / "config.json").exists():
            subprocess.run([PY, str(ROOT / "benches/make_checkpoint.py"), args.model, str(ckpt), "--layers", str(n)],
                           check=True)
        size = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
        peak, seconds, nbytes = build(args.model, ckpt, args.work / f"out-l{n}")
        rows.append((n, size, peak, seconds, nbytes))
    print(f"\n{args.model}: peak RSS of `quantkit compress --bits 4` by layer count")
    print(f"{'layers':>6}{'checkpoint bytes':>20}{'build bytes':>16}{'peak RSS GB':>13}{'wall s':>8}")
    for n, size, peak, seconds, nbytes in rows:
        print(f"{n:>6}{size:>20,}{nbytes:>16,}{peak:>13.2f}{seconds:>8.0f}")
    if len(rows) > 1:
        (n0, _, p0, _, _), (n1, _, p1, _, _) = rows[0], rows[-1]
        print(f"growth: {(p1 - p0) / (n1 - n0):+.2f} GB per layer; target: peak < 12 GB")


if __name__ == "__main__":
    main()
