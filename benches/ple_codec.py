"""The lookup-table codec on the only real embedding table at hand: the Gemma 3 270M's token embedding (tied to the
output head), standing in for Gemma 4's PLE table. Every other tensor stays F32, so the KLD is the table's alone.

For each candidate type the table is written twice: with no importance (llama.cpp's data-free search; for the
IQ2 types, which need weights, a uniform importance) and with quantkit's data-aware importance for the table
(calibration/embed_importance.py: head use + input use, from a capture over the built-in c4 text). Each file is
judged by llama.cpp against the F32 base on held-out wiki text (llama-perplexity's convention).

The 270M's rows are 640 wide, which no 256-block type (the K and IQ types) can hold: llama.cpp would write its
fallback type instead. Gemma 4's PLE rows are 35 x 256 wide and hold them all. So for those types the codec runs
on the table viewed as rows of lcm(640, 256) = 1280 values (two table rows each, importance tiled to match),
exactly the blocks the codec makes of a PLE row, and the decoded values are stored as F32: llama.cpp then judges
the codec's values, at the type's bits per weight, in a file that is not that small. Those rows say "as F32".

    .venv/bin/python benches/ple_codec.py [--chunks 16] [--calib-tokens 16384] [--types IQ2_XXS,Q2_K,...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.quality import f32_base, judge_file, reference_logits  # noqa: E402
from quantkit.calibration.capture import calibration_ids, capture  # noqa: E402
from quantkit.calibration.embed_importance import embed_importance  # noqa: E402
from quantkit.calibration.text import eval_chunks  # noqa: E402
from quantkit.formats.gguf_model import write_gguf  # noqa: E402
from quantkit.formats.gguf_source import GGUFSource  # noqa: E402
from quantkit.kernels import registry  # noqa: E402

TABLE = "embed_tokens.weight"
TYPES = ("IQ2_XXS", "IQ2_XS", "Q2_K", "IQ3_XXS", "Q3_K", "IQ4_XS", "Q4_K", "Q5_K", "Q6_K", "Q8_0")


def codec_values(table: np.ndarray, type_name: str, importance: np.ndarray | None) -> np.ndarray:
    """The table encoded as `type_name` and decoded, on rows of lcm(cols, block) values (see the module doc)."""
    rows, cols = table.shape
    width = int(np.lcm(cols, registry.get(type_name).block_size))
    view = np.ascontiguousarray(table, dtype=np.float32).reshape(-1, width)
    imp = None if importance is None else np.tile(importance, width // cols)
    data = registry.quantize(type_name, view, imp, name=TABLE)
    return registry.dequantize(type_name, data, view.shape).reshape(rows, cols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--chunks", type=int, default=16, help="512-token wiki chunks to evaluate")
    ap.add_argument("--calib-tokens", type=int, default=16384, help="c4 tokens for the importance capture")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    base = f32_base()
    source = GGUFSource(base)
    tok = source.tokenizer()
    t0 = time.perf_counter()
    ids = calibration_ids(tok, "c4", max(1, args.calib_tokens // 512), 512)
    quantkit_imp = embed_importance(capture(source.spec, source, ids, progress=False))
    print(f"importance capture: {ids.size} c4 tokens in {time.perf_counter() - t0:.0f} s", flush=True)
    chunks = eval_chunks(tok, "wiki", args.chunks * 512, 512).ids

    cols = source.info(TABLE).shape[1]
    rows = []
    with tempfile.TemporaryDirectory(dir=base.parent) as tmp:
        ref, base_result = reference_logits(base, chunks, Path(tmp), args.threads)
        for t in args.types.split(","):
            bt = registry.get(t)
            fits = cols % bt.block_size == 0  # else the codec runs on 1280-wide views, stored as F32 (module doc)
            plain = np.ones(cols, np.float32) if bt.needs_imatrix else None
            result = {}
            for label, imp in (("none" if plain is None else "uniform", plain), ("quantkit", quantkit_imp)):
                path = Path(tmp) / f"{t}-{label}.gguf"
                if fits:
                    write_gguf(source, path, {TABLE: t}, importance=None if imp is None else {TABLE: imp},
                               progress=False)
                else:
                    values = codec_values(source.get(TABLE), t, imp)
                    write_gguf(source, path, {TABLE: "F32"}, progress=False,
                               encoded=lambda n: registry.quantize("F32", values, name=n) if n == TABLE else None)
                result[label] = judge_file(path, chunks, ref, args.threads)
                path.unlink()
            (l0, r0), (l1, r1) = result.items()
            t = t if fits else f"{t} (as F32)"
            rows.append((t, bt.bits_per_weight, l0, r0, r1))
            print(f"{t:<8} {bt.bits_per_weight:5.3f} bpw  KLD {l0} {r0.mean_kld:.5f}  quantkit {r1.mean_kld:.5f}  "
                  f"({r1.mean_kld / r0.mean_kld:.3f}x)", flush=True)

    print(f"\nGemma 3 270M, token embedding only (tied head) quantized, rest F32; llama.cpp judge, "
          f"{base_result.n_tokens} scored wiki tokens; F32 base PPL {base_result.ppl:.4f}")
    print(f"| type | bpw | mean KLD, no data (importance) | mean KLD, quantkit importance | ratio | PPL no data | PPL quantkit |")
    print("|---|---|---|---|---|---|---|")
    for t, bpw, l0, r0, r1 in rows:
        print(f"| {t} | {bpw:.3f} | {r0.mean_kld:.5f} ({l0}) | {r1.mean_kld:.5f} | {r1.mean_kld / r0.mean_kld:.3f} | "
              f"{r0.ppl:.4f} | {r1.ppl:.4f} |")


if __name__ == "__main__":
    main()
