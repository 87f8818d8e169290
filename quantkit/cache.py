"""The one cache directory for heavy artifacts that are built or downloaded once:
the assembled Gemma 3 270M GGUF, the exllamav3 wheel holding the built-in text,
and the llama-cpp-python wheel built for the tests.

Default `~/.cache/quantkit`; the `QUANTKIT_CACHE` environment variable overrides it.
Files are written to a temporary name and renamed, so an interrupted download or
assembly never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from quantkit.errors import IOFailure


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("QUANTKIT_CACHE") or Path.home() / ".cache" / "quantkit")
    d = root.joinpath(*parts)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IOFailure(f"cache directory {d} cannot be created ({e.strerror}); set QUANTKIT_CACHE to a writable folder") from e
    return d


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pip_download(requirement: str, filename: str, sha256: str | None, source: bool = False) -> Path:
    """Download one wheel (or with `source`, one source package) with `pip download --no-deps` into the cache;
    with `sha256`, verify it."""
    dest = cache_dir("downloads")
    path = dest / filename
    if path.exists() and (sha256 is None or sha256_file(path) == sha256):
        return path
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        kind = ["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "-q", "-d", tmp, requirement]
        r = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / filename
        if r.returncode != 0 or not got.exists():
            raise IOFailure(f"`{' '.join(cmd[2:])}` failed: {(r.stderr or r.stdout).strip().splitlines()[-1:] or ['no output']}")
        digest = sha256 and sha256_file(got)
        if digest != sha256:
            raise IOFailure(f"{requirement}: downloaded {filename} has sha256 {digest}, expected {sha256}")
        os.replace(got, path)
    return path
