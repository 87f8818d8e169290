"""Faults during `quantkit compress`: a full disk, an interrupt, a source file truncated or
rewritten while it is read. Each ends with a one-line message, the documented exit status
(IOFailure 1, bad input 2, interrupted 130), and neither a .gguf nor a temporary file in the
output directory."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tiny_models
import tiny_tokenizer
from quantkit.errors import BadFile, IOFailure

QUANTKIT = Path(sys.executable).with_name("quantkit")
FLAGS = ["--type", "Q8_0", "--method", "rtn", "--tokens", "0"]
DISK = 160 * 1024  # bytes of room on the "full disk": the tiny build needs about 320 KB


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    model, _ = tiny_models.gemma4_dense()
    model.save_pretrained(d)
    tiny_tokenizer.save(d)
    return d


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """A Gemma 3 of 8 layers, 256 wide, 4096 tokens (about 4.6 M parameters in bf16): its write
    takes long enough to be interrupted in the middle."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=4096, hidden_size=256, intermediate_size=1024, num_hidden_layers=8,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=64, sliding_window=16,
                           max_position_embeddings=1024, attn_implementation="eager")
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("medium")
    Gemma3ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d)
    tiny_tokenizer.save(d, 4096)
    return d


def leftovers(out: Path) -> list[str]:
    """Builds and temporary files anywhere under the output directory."""
    return sorted(p.name for p in out.rglob("*") if p.suffix in (".gguf", ".partial")) if out.is_dir() else []


def main_in_process(monkeypatch, capsys, *args) -> tuple[int, list[str]]:
    """`quantkit ARGS` through the CLI's own entry point in this process, so the test can patch it;
    returns (exit status, stderr lines)."""
    from quantkit import cli

    monkeypatch.setattr(sys, "argv", ["quantkit", *args])
    term = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        signal.signal(signal.SIGTERM, term)
    return e.value.code, capsys.readouterr().err.splitlines()


# -- (a) out of disk space -----------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 160 KiB tmpfs where this process may mount one (root), else None."""
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(d)], capture_output=True)
    if r.returncode:
        yield None
        return
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


class _FullFile:
    """A file on a disk with `room` bytes left: writes past it fail with ENOSPC, as write(2) does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, b) -> int:
        n = memoryview(b).nbytes
        if n > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _simulate_full_disk(monkeypatch, room: int, at: str, files: str = ".gguf.") -> None:
    """ENOSPC for the temporary files (formats.atomic's `.NAME.*.partial`) whose name contains `files`: the build's
    by default, every one with files=""."""
    fdopen, fsync = os.fdopen, os.fsync

    def hit(fd) -> bool:
        path = os.readlink(f"/proc/self/fd/{fd}")
        return path.endswith(".partial") and files in Path(path).name

    def full_fdopen(fd, *a, **k):
        f = fdopen(fd, *a, **k)
        return _FullFile(f, room) if at == "write" and hit(fd) else f

    def full_fsync(fd):
        if not hit(fd):
            return fsync(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fdopen", full_fdopen)
    if at == "fsync":
        monkeypatch.setattr(os, "fsync", full_fsync)


def _check_no_space(status: int, lines: list[str], out: Path) -> None:
    assert status == IOFailure.exit_code == 1
    assert len(lines) == 1, lines
    assert re.fullmatch(r"error: .*\.gguf: writing failed \(No space left on device\)", lines[0]), lines[0]
    assert leftovers(out) == []


def test_full_disk(tiny, small_tmpfs, tmp_path, monkeypatch, capsys):
    """A real full tmpfs through the installed command where mounting is allowed; else the same
    ENOSPC from write(2) after DISK bytes, simulated in process."""
    if small_tmpfs is not None:
        r = subprocess.run([str(QUANTKIT), "compress", str(tiny), *FLAGS, "--out", str(small_tmpfs / "out")],
                           capture_output=True, text=True, timeout=300)
        assert "Traceback" not in r.stderr
        _check_no_space(r.returncode, r.stderr.splitlines(), small_tmpfs / "out")
        return
    _simulate_full_disk(monkeypatch, DISK, "write")
    status, lines = main_in_process(monkeypatch, capsys, "compress", str(tiny), *FLAGS, "--out", str(tmp_path / "out"))
    _check_no_space(status, lines, tmp_path / "out")


@pytest.mark.parametrize("room,at", [(0, "write"), (100_000, "write"), (None, "fsync")], ids=["header", "data", "fsync"])
def test_full_disk_at_each_stage(tiny, tmp_path, monkeypatch, capsys, room, at):
    _simulate_full_disk(monkeypatch, room, at)
    status, lines = main_in_process(monkeypatch, capsys, "compress", str(tiny), *FLAGS, "--out", str(tmp_path / "out"))
    _check_no_space(status, lines, tmp_path / "out")


def test_full_disk_before_the_build(tiny, tmp_path, monkeypatch, capsys):
    """The disk is already full when the run starts: its first file (the work folder's run.json) fails, in one line,
    and nothing is left behind."""
    _simulate_full_disk(monkeypatch, 0, "write", files="")
    out = tmp_path / "out"
    status, lines = main_in_process(monkeypatch, capsys, "compress", str(tiny), *FLAGS, "--out", str(out))
    assert status == IOFailure.exit_code == 1
    assert lines == [f"error: {out / 'work' / 'run.json'}: writing failed (No space left on device)"], lines
    assert not (out / "work").exists() and leftovers(out) == []


# -- (b) SIGINT / SIGTERM in the middle of the write ------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_during_write(medium, tmp_path, sig):
    out = tmp_path / "out"
    p = subprocess.Popen([str(QUANTKIT), "compress", str(medium), *FLAGS, "--out", str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not [f for f in (out.iterdir() if out.is_dir() else []) if f.name.endswith(".partial")]:
        assert p.poll() is None, f"compress ended before its write began: {p.communicate()}"
        assert time.monotonic() < deadline, "no temporary file appeared"
        time.sleep(0.005)
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.strip()] == ["interrupted"]
    assert "wrote" not in stdout  # it was stopped before the rename, not after
    assert leftovers(out) == []


# -- (c) the source changes while it is read ---------------------------------------------------

def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _rewrite(path: Path) -> None:
    """Same size, other bytes: a re-download or another tool writing into the file."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size - 4096)
        f.write(os.urandom(4096))


@pytest.mark.parametrize("source", ["safetensors", "gguf"])
@pytest.mark.parametrize("change", [_truncate, _rewrite], ids=["truncated", "rewritten"])
def test_source_changes_during_the_run(tiny, tmp_path, monkeypatch, capsys, source, change):
    """After the first tensor is written, the source file changes under the running compress."""
    from quantkit.compress import CompressOptions, run
    from quantkit.formats import gguf_writer
    from quantkit.formats.hf_source import HFSource

    if source == "gguf":
        model = run(HFSource(tiny), tmp_path / "src", CompressOptions(type_name="Q8_0", method="rtn", eval_tokens=0,
                                                                      progress=False)).path
        victim = model
    else:
        import shutil

        model = shutil.copytree(tiny, tmp_path / "src")
        victim = model / "model.safetensors"
    write = gguf_writer.write

    def write_then_change(path, metadata, tensors, encode, progress=False):
        seen = []

        def encode_then_change(entry):
            if len(seen) == 2:
                change(victim)
            seen.append(entry.name)
            return encode(entry)

        return write(path, metadata, tensors, encode_then_change, progress)

    monkeypatch.setattr(gguf_writer, "write", write_then_change)
    out = tmp_path / "out"
    status, lines = main_in_process(monkeypatch, capsys, "compress", str(model), *FLAGS, "--out", str(out))
    assert status == BadFile.exit_code == 2
    assert len(lines) == 1, lines
    assert re.fullmatch(rf"error: {re.escape(str(victim))}: changed on disk while quantkit was reading it "
                        rf"\(\d+ bytes when opened, \d+ now\); restore the file and run again", lines[0]), lines[0]
    assert leftovers(out) == []
