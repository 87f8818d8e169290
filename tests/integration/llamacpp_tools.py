"""llama.cpp's own command-line tools, `llama-imatrix` and `llama-quantize`, built once from the llama-cpp-python
0.3.36 source package (tests/integration/llamacpp.py llama_cpp_source) into the quantkit cache, and run as
users run them. CPU only, static, no network libraries; the integration tier and benches/quality.py use them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

from quantkit.cache import cache_dir

from .llamacpp import LLAMA_CPP_PYTHON, llama_cpp_source

TOOLS = ("llama-quantize", "llama-imatrix")
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"  # as .ci/setup-env builds the wheel: AMX dies in some VMs
CMAKE_FLAGS = (
    f"-DCMAKE_C_FLAGS={NO_AMX}",
    f"-DCMAKE_CXX_FLAGS={NO_AMX}",
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_COMMON=ON",
)


def llama_cpp_tools() -> Path:
    """The folder holding `llama-quantize` and `llama-imatrix`; built on the first call (minutes), reused after.

    The build runs in a temporary folder next to the result and only the finished binaries are renamed into
    place, so an interrupted build never leaves a folder that looks complete."""
    root = cache_dir("llama.cpp-tools")
    final = root / (LLAMA_CPP_PYTHON.replace("==", "-") + "-native-noamx")
    if all((final / t).is_file() for t in TOOLS):
        return final
    cmake = shutil.which("cmake")
    if cmake is None:
        raise RuntimeError("building llama.cpp's llama-quantize and llama-imatrix needs `cmake` and a C++ compiler "
                           "on PATH (e.g. apt-get install cmake g++, or pip install cmake)")
    src = llama_cpp_source()
    jobs = str(len(os.sched_getaffinity(0)))
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
        build, log = Path(tmp) / "build", Path(tmp) / "build.log"
        steps = ([cmake, "-S", str(src), "-B", str(build), *CMAKE_FLAGS],
                 [cmake, "--build", str(build), "--config", "Release", "-j", jobs, "--target", *TOOLS])
        t = time.perf_counter()
        with open(log, "w") as f:
            for cmd in steps:
                if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
                    f.flush()
                    raise RuntimeError(f"building llama.cpp's tools failed at `{' '.join(cmd)}`:\n"
                                       f"{log.read_text(errors='replace')[-4000:]}")
        staged = Path(tmp) / "bin"
        staged.mkdir()
        for tool in TOOLS:
            shutil.copy2(build / "bin" / tool, staged / tool)
        (staged / "BUILD").write_text(f"{LLAMA_CPP_PYTHON} vendor/llama.cpp, cmake {' '.join(CMAKE_FLAGS)}; "
                                      f"{time.perf_counter() - t:.0f}s with -j {jobs}\n")
        try:
            os.replace(staged, final)
        except OSError:
            if not all((final / t).is_file() for t in TOOLS):  # not another process's finished build
                raise
    return final


def _run(tool: str, args: Sequence[object]) -> str:
    cmd = [str(llama_cpp_tools() / tool), *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (rc={r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}")
    return r.stdout + r.stderr


def llama_imatrix(model: Path, text: Path, out: Path, *, chunks: int, ctx: int = 512, threads: int = 2) -> Path:
    """`llama-imatrix` over the first `chunks` chunks of `ctx` tokens of the text file (its tokenization, BOS at
    each chunk's start, every token's activations recorded; perplexity not computed)."""
    _run("llama-imatrix", ["-m", model, "-f", text, "-o", out, "-c", ctx, "-b", ctx, "--chunks", chunks,
                           "-t", threads, "--no-ppl"])
    return out


def llama_quantize_cli(src: Path, dst: Path, ftype: str, *, imatrix: Path | None = None, pure: bool = False,
                       tensor_types: Sequence[str] = (), token_embedding_type: str | None = None,
                       output_tensor_type: str | None = None, threads: int = 2) -> Path:
    """`llama-quantize [--imatrix FILE] [--pure] [--token-embedding-type T] [--output-tensor-type T]
    [--tensor-type REGEX=TYPE ...] src dst FTYPE threads`."""
    args: list[object] = []
    if imatrix is not None:
        args += ["--imatrix", imatrix]
    if pure:
        args.append("--pure")
    if token_embedding_type is not None:
        args += ["--token-embedding-type", token_embedding_type]
    if output_tensor_type is not None:
        args += ["--output-tensor-type", output_tensor_type]
    for tt in tensor_types:
        args += ["--tensor-type", tt]
    _run("llama-quantize", [*args, src, dst, ftype, threads])
    return dst
