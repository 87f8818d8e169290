"""Throughput of quantkit's ggml encoders vs llama.cpp and gguf-py.

For each type, one random float32 tensor [rows, cols] is quantized by
  * quantkit (registry.quantize, Numba, T threads),
  * llama.cpp: llama_model_quantize on a GGUF holding only that tensor
    (gemma3 metadata, pure=True, nthread=T; includes llama.cpp's file I/O),
    and, for reference, ggml_quantize_chunk from libggml-base (1 thread, no I/O),
  * gguf-py's numpy quantizer where it has one (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
Numbers are parameters per second per core (= params / seconds / threads used).

    .venv/bin/python benches/kernels.py [--rows 1024 --cols 4096 --threads N --types Q4_K,Q6_K]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import gguf
import numba

from quantkit.formats.gguf_model import FILE_TYPE
from quantkit.kernels import registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.llamacpp import copy_metadata  # noqa: E402

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
         "IQ4_NL", "IQ4_XS", "IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S"]
GGUF_PY = {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}
MODEL = Path(os.environ.get("QUANTKIT_GEMMA3_270M_GGUF", "/root/.cache/quantkit/models/gemma-3-270m-q4_k_m.gguf"))
TENSOR = "blk.0.ffn_down.weight"


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def write_single_tensor_gguf(path: Path, x: np.ndarray) -> None:
    writer = gguf.GGUFWriter(str(path), "gemma3")
    if MODEL.exists():  # llama_model_quantize loads the hparams: borrow the real gemma3 ones
        copy_metadata(gguf.GGUFReader(str(MODEL)), writer, skip=("tokenizer.",))
    else:
        writer.add_block_count(1)
        writer.add_context_length(2048)
        writer.add_embedding_length(x.shape[1])
        writer.add_feed_forward_length(x.shape[0])
        writer.add_head_count(4)
        writer.add_head_count_kv(1)
        writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(0)
    writer.add_tensor(TENSOR, x)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


class LlamaCpp:
    def __init__(self):
        import llama_cpp

        self.llama_cpp = llama_cpp
        libdir = Path(llama_cpp.__file__).parent / "lib"
        self.base = ctypes.CDLL(str(libdir / "libggml-base.so"))
        self.base.ggml_quantize_chunk.restype = ctypes.c_size_t
        self.base.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                                  ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        self.base.ggml_quantize_init.argtypes = [ctypes.c_int]
        self._silence()

    def _silence(self):
        cb_type = getattr(self.llama_cpp, "llama_log_callback",
                          ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p))
        self._cb = cb_type(lambda level, text, data: None)
        try:
            self.llama_cpp.llama_log_set(self._cb, None)
        except Exception:
            pass

    def model_quantize(self, src: Path, dst: Path, qname: str, nthread: int, imatrix: np.ndarray | None):
        lc = self.llama_cpp
        params = lc.llama_model_quantize_default_params()
        params.nthread = nthread
        params.ftype = getattr(lc, "LLAMA_FTYPE_" + FILE_TYPE[qname])
        params.pure = True
        if imatrix is not None:
            entries = (lc.llama_model_imatrix_data * 2)()
            entries[0].name = TENSOR.encode()
            entries[0].data = imatrix.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[0].size = imatrix.size
            entries[1].name = None
            params.imatrix = ctypes.cast(entries, type(params.imatrix))
        rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize failed for {qname}")

    def chunk(self, qname: str, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        t = gguf.GGMLQuantizationType[qname]
        out = np.empty(registry.tensor_nbytes(qname, x.shape), np.uint8)
        self.base.ggml_quantize_init(int(t))
        self.base.ggml_quantize_chunk(int(t), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1],
                                      None if imatrix is None else imatrix.ctypes.data)
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    threads = args.threads
    numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x = np.ascontiguousarray(rng.standard_normal((args.rows, args.cols)).astype(np.float32) * 0.02)
    imp = rng.lognormal(0.0, 1.0, args.cols).astype(np.float32)
    n = x.size
    print(f"machine: {os.cpu_count()} cores (os.cpu_count), {len(os.sched_getaffinity(0))} usable; "
          f"numba threads {threads}; tensor {args.rows}x{args.cols} = {n / 1e6:.1f}M params")
    try:
        lc = LlamaCpp()
    except Exception as e:  # llama-cpp-python not installed
        print(f"llama.cpp not available: {e}")
        lc = None

    header = (f"{'type':8s} {'quantkit':>10s} {'llama.cpp':>10s} {'ggml 1T':>10s} {'gguf-py':>10s} "
              f"{'qk/llama':>9s} {'qk/ggml1T':>9s} {'qk/gguf':>8s}  [Mparams/s/core]  exact")
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src.gguf"
        if lc is not None:
            write_single_tensor_gguf(src, x)
        for qname in [t.strip().upper() for t in args.types.split(",") if t.strip()]:
            qimp = imp if registry.get(qname).needs_imatrix else None
            reps = args.repeats if qname not in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS") else 1
            registry.quantize(qname, x[:4], importance=qimp)  # compile / warm up
            ours_out = registry.quantize(qname, x, importance=qimp)
            t_q = best_time(lambda: registry.quantize(qname, x, importance=qimp), reps)
            qk = n / t_q / threads / 1e6
            llama = ggml1 = gpy = float("nan")
            exact = "-"
            if lc is not None:
                dst = Path(tmp) / f"{qname}.gguf"
                t_l = best_time(lambda: lc.model_quantize(src, dst, qname, threads, qimp), reps)
                llama = n / t_l / threads / 1e6
                ref = lc.chunk(qname, x, qimp)
                t_c = best_time(lambda: lc.chunk(qname, x, qimp), 1)
                ggml1 = n / t_c / 1e6
                exact = "yes" if np.array_equal(ours_out.reshape(-1), ref) else "NO"
            if qname in GGUF_PY:
                gt = gguf.GGMLQuantizationType[qname]
                t_g = best_time(lambda: gguf.quants.quantize(x, gt), 1)
                gpy = n / t_g / 1e6
            print(f"{qname:8s} {qk:10.2f} {llama:10.2f} {ggml1:10.2f} {gpy:10.2f} "
                  f"{qk / llama:9.2f} {qk / ggml1:9.2f} {qk / gpy:8.1f}  {'':16s} {exact}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
