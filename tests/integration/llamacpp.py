"""Test helpers around llama.cpp: its judge (quantkit.judge) and the F32 base of a GGUF."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType
from gguf.quants import dequantize

from quantkit.judge import Judge  # noqa: F401  (re-exported for the tests)


def copy_metadata(reader: GGUFReader, writer: GGUFWriter, skip: tuple[str, ...] = ()) -> None:
    """Every metadata key of `reader` into `writer` but the header fields, architecture and file type, and keys
    starting with one of `skip` (a synthetic file borrows a real model's hparams so that llama.cpp loads it)."""
    from gguf import GGUFValueType

    for key, field in reader.fields.items():
        if key.startswith(("GGUF.", *skip)) or key in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        if vtype == GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), vtype)


def write_f32_base(src: Path, dst: Path) -> Path:
    """Dequantize every tensor of `src` to F32 with gguf-py (the oracle decoder) and copy
    metadata and tokenizer: the full-precision base the llama.cpp 270M anchors were measured on."""
    if dst.exists():
        return dst
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(str(dst) + ".partial", arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if len(f.types) > 1 else None
        w.add_key_value(key, f.contents(), vtype, sub_type=sub)
    w.add_file_type(0)  # ALL_F32
    for t in r.tensors:
        a = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w.add_tensor(t.name, a.reshape(tuple(reversed([int(d) for d in t.shape]))), raw_dtype=GGMLQuantizationType.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(str(dst) + ".partial", dst)
    return dst


LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
_SDIST = "llama_cpp_python-0.3.36.tar.gz"
_SDIST_ROOT = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
_SKIPPED = ("docs/", "models/", "media/")  # neither the converter nor the CMake build reads them (~115 MB)
_COMPLETE = ("convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py", "CMakeLists.txt", "tools/imatrix/imatrix.cpp")


def llama_cpp_sdist() -> Path:
    """The llama-cpp-python source package, downloaded once with pip into the quantkit cache."""
    from quantkit.cache import pip_download

    return pip_download(LLAMA_CPP_PYTHON, _SDIST, None, source=True)


def llama_cpp_source() -> Path:
    """llama.cpp's source tree (vendor/llama.cpp of the llama-cpp-python source package, less docs and vocab
    files), extracted once into the quantkit cache: the converter (convert_hf_to_gguf.py, conversion/, gguf-py/)
    and everything CMake needs to build its tools (tests/integration/llamacpp_tools.py)."""
    import tarfile
    import tempfile

    from quantkit.cache import cache_dir

    root = cache_dir("llama.cpp-src")
    src = root / _SDIST_ROOT
    if all((src / p).is_file() for p in _COMPLETE):
        return src
    sdist = llama_cpp_sdist()
    top = _SDIST_ROOT.split("/")[0]
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        with tarfile.open(sdist) as tf:
            members = [m for m in tf.getmembers()
                       if m.name.startswith(_SDIST_ROOT) and not m.name[len(_SDIST_ROOT):].startswith(_SKIPPED)]
            tf.extractall(Path(tmp) / "x", members=members, filter="data")
        try:
            if (root / top).exists():  # an older extraction with the converter only: swap it out
                os.replace(root / top, Path(tmp) / "old")
            os.replace(Path(tmp) / "x" / top, root / top)
        except OSError:
            if not all((src / p).is_file() for p in _COMPLETE):  # not another process's complete copy
                raise
    return src


def convert_hf(hf_dir: Path, out: Path, outtype: str = "f32", mmproj: bool = False) -> Path:
    """Run llama.cpp's own convert_hf_to_gguf.py (with its bundled gguf-py) on a Hugging Face directory; with
    `mmproj`, its `--mmproj` mode (the vision/audio towers' file)."""
    import subprocess
    import sys

    src = llama_cpp_source()
    env = dict(os.environ, PYTHONPATH=str(src / "gguf-py"))
    cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(hf_dir), "--outtype", outtype, "--outfile", str(out),
           *(["--mmproj"] if mmproj else [])]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {hf_dir}:\n{r.stderr[-4000:]}")
    return out


def llama_quantize(src: Path, dst: Path, preset: str, importance: dict[str, np.ndarray] | None = None,
                   threads: int = 2, pure: bool = False) -> None:
    """`llama_model_quantize` at a preset (`pure`: every tensor at the preset's default type, as
    `llama-quantize --pure`), optionally with an importance matrix (E[x^2] per input column, by
    GGUF tensor name) handed over as llama.cpp's imatrix entries."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{preset}")
    params.pure = pure
    keep = []  # the ctypes arrays must outlive the call
    if importance is not None:
        entries = (llama_cpp.llama_model_imatrix_data * (len(importance) + 1))()
        for i, (name, vec) in enumerate(importance.items()):
            vec = np.ascontiguousarray(vec, np.float32).reshape(-1)
            keep.append(vec)
            entries[i].name = name.encode()
            entries[i].data = vec.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = vec.size
        entries[len(importance)].name = None
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, type(params.imatrix))
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed for {preset} (rc={rc})")
