"""`quantkit compress` is repeatable and resumable, on a tiny random Gemma 4 (E-style: PLE, KV sharing): two runs
give the same bytes, and a run interrupted after block k (or in the middle of writing block k's checkpoint) and
continued with --resume gives the bytes of the run that never stopped, without redoing the finished blocks. A work
folder that belongs to another run is refused with a one-line message."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import sys
from pathlib import Path

import pytest
import torch

import tiny_models
import tiny_tokenizer
from quantkit.calibration import capture as capture_mod
from quantkit.errors import BadOption

N_LAYERS = 7
RUN_STAGE = capture_mod.Capture._run_stage


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_e")
    # tiny_models.gemma4_e with 32-wide per-layer inputs: the PLE table's rows (7 x 32) are then block-quantized with
    # the importance that the capture's PLE accumulator (a checkpointed running sum) gives them
    S, F = "sliding_attention", "full_attention"
    model, _ = tiny_models._gemma4(0, num_hidden_layers=N_LAYERS, layer_types=[S, S, F, S, S, F, F],
                                   num_kv_shared_layers=4, use_double_wide_mlp=True, hidden_size_per_layer_input=32,
                                   num_key_value_heads=1)
    model.save_pretrained(d)
    tiny_tokenizer.save(d)
    calib = tmp_path_factory.mktemp("calib") / "calib.txt"
    calib.write_text(tiny_tokenizer.TEXT * 30)
    return d, calib


def flags(tiny, *recipe: str) -> list[str]:
    d, calib = tiny
    return [str(d), *(recipe or ("--type", "Q4_K")), "--calib", str(calib), "--calib-tokens", "1024", "--tokens", "0"]


def compress(monkeypatch, capsys, *args: str) -> tuple[int, list[str], list[str]]:
    """`quantkit compress ARGS` through the CLI's entry point in this process; (exit status, stdout, stderr)."""
    from quantkit import cli

    monkeypatch.setattr(sys, "argv", ["quantkit", "compress", *args])
    term = signal.getsignal(signal.SIGTERM)
    code = 0  # main() returns on success
    try:
        cli.main()
    except SystemExit as e:
        code = e.code
    finally:
        signal.signal(signal.SIGTERM, term)
    out = capsys.readouterr()
    return code, out.out.splitlines(), [line for line in out.err.splitlines() if line.strip()]


class Stages:
    """Records the stages the GPTQ capture runs (observing passes only) and raises KeyboardInterrupt when it is
    about to start stage `stop`."""

    def __init__(self, monkeypatch, stop: int | None = None):
        self.ran: list[int] = []
        self.pre: int = 0  # observing passes of the budget pre-capture

        def counted(capture, i, states, observe):
            if observe and capture.on_linear is None:
                self.pre += 1
            elif observe:
                if i == stop:
                    raise KeyboardInterrupt
                self.ran.append(i)
            return RUN_STAGE(capture, i, states, observe)

        monkeypatch.setattr(capture_mod.Capture, "_run_stage", counted)


def gguf(out: Path) -> Path:
    (path,) = out.glob("*.gguf")
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """Two uninterrupted runs of the same command: the bytes every other run must give."""
    from quantkit.compress import CompressOptions, run
    from quantkit.formats.hf_source import HFSource

    d, calib = tiny
    opts = dict(type_name="Q4_K", method="gptq", calib=str(calib), calib_tokens=1024, eval_tokens=0, progress=False)
    base = tmp_path_factory.mktemp("reference")
    a = run(HFSource(d), base / "a", CompressOptions(**opts))
    b = run(HFSource(d), base / "b", CompressOptions(**opts))
    return a.path, b.path


def test_two_runs_give_the_same_bytes(reference):
    from gguf import GGUFReader

    a, b = reference
    print(f"\n{a.name}: {a.stat().st_size:,} bytes, sha256 {sha(a)} / {sha(b)}")
    assert a.read_bytes() == b.read_bytes()
    # nothing in the metadata says when or where it was made
    meta = {k: f.contents() for k, f in GGUFReader(a).fields.items() if not k.startswith("tokenizer.ggml.")}
    assert "quantkit.recipe" in meta
    for key, value in meta.items():
        assert not re.search(r"date|time|host|user", key), key
        assert not re.search(r"\d{4}-\d\d-\d\d|\d\d:\d\d", str(value)), (key, value)


@pytest.mark.parametrize("k", [2, 5])
def test_resume_after_block_k(tiny, reference, tmp_path, monkeypatch, capsys, k):
    out = tmp_path / "out"
    stages = Stages(monkeypatch, stop=k + 1)
    code, _, err = compress(monkeypatch, capsys, *flags(tiny), "--out", str(out))
    assert code == 130 and err == ["interrupted"]
    assert stages.ran == list(range(-1, k + 1))
    ck = torch.load(out / "work" / "capture.pt", weights_only=True)
    assert ck["stage"] == k
    assert not list(out.glob("*.gguf")) and not list((out / "work").glob(".*.tmp"))

    stages = Stages(monkeypatch)
    code, stdout, err = compress(monkeypatch, capsys, *flags(tiny), "--out", str(out), "--resume")
    assert code == 0, err
    assert stages.ran == list(range(k + 1, N_LAYERS))
    assert f"resumed {out / 'work'}: the interrupted run had done its plan, embedding and blocks 0-{k} of {N_LAYERS}" \
        in stdout
    path = gguf(out)
    print(f"\nresumed after block {k}: {path.stat().st_size:,} bytes, sha256 {sha(path)}")
    assert path.read_bytes() == reference[0].read_bytes()
    assert not (out / "work").exists()


def test_interrupt_while_checkpointing_keeps_the_previous_checkpoint(tiny, reference, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the middle of writing block 3's checkpoint: block 2's stays valid, and the resumed run redoes
    block 3 (whose quantized tensors had already been written) to the same bytes."""
    out = tmp_path / "out"
    saves = []
    save = torch.save

    def interrupted_save(obj, f, *a, **kw):
        if isinstance(obj, dict) and obj.get("stage") == 3:
            f.write(b"partial")
            raise KeyboardInterrupt
        saves.append(obj.get("stage") if isinstance(obj, dict) else "ple")
        return save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", interrupted_save)
    code, _, err = compress(monkeypatch, capsys, *flags(tiny), "--out", str(out))
    assert code == 130 and err == ["interrupted"]
    assert saves == ["ple", -1, 0, 1, 2]
    assert (out / "work" / "layers.3.mlp.down_proj.weight.npy").exists()
    assert sorted(p.name for p in (out / "work").glob(".*")) == []  # the temporary file is gone
    assert torch.load(out / "work" / "capture.pt", weights_only=True)["stage"] == 2

    monkeypatch.setattr(torch, "save", save)
    stages = Stages(monkeypatch)
    code, stdout, err = compress(monkeypatch, capsys, *flags(tiny), "--out", str(out), "--resume")
    assert code == 0, err
    assert stages.ran == list(range(3, N_LAYERS))
    assert gguf(out).read_bytes() == reference[0].read_bytes()


def test_resume_a_budget_build_reuses_its_plan(tiny, tmp_path, monkeypatch, capsys):
    """--bits: the pre-capture and the sensitivity table are not redone, the plan is the saved one."""
    recipe = ("--bits", "3")
    stages = Stages(monkeypatch)
    code, _, err = compress(monkeypatch, capsys, *flags(tiny, *recipe), "--out", str(tmp_path / "whole"))
    assert code == 0, err
    assert stages.pre == N_LAYERS + 1
    whole = gguf(tmp_path / "whole")

    out = tmp_path / "out"
    Stages(monkeypatch, stop=4)
    code, _, err = compress(monkeypatch, capsys, *flags(tiny, *recipe), "--out", str(out))
    assert code == 130
    stages = Stages(monkeypatch)
    code, stdout, err = compress(monkeypatch, capsys, *flags(tiny, *recipe), "--out", str(out), "--resume")
    assert code == 0, err
    assert stages.pre == 0 and stages.ran == list(range(4, N_LAYERS))
    assert "plan, embedding and blocks 0-3" in "\n".join(stdout)
    print(f"\n--bits 3: {whole.stat().st_size:,} bytes, sha256 {sha(whole)} / resumed {sha(gguf(out))}")
    assert gguf(out).read_bytes() == whole.read_bytes()
    assert json.loads((out / "plan.json").read_text()) == json.loads((tmp_path / "whole" / "plan.json").read_text())


@pytest.fixture
def interrupted(tiny, tmp_path, monkeypatch, capsys):
    """An --out whose run was interrupted after the embedding."""
    out = tmp_path / "out"
    Stages(monkeypatch, stop=0)
    code, _, _ = compress(monkeypatch, capsys, *flags(tiny), "--out", str(out))
    assert code == 130 and (out / "work" / "capture.pt").exists()
    monkeypatch.undo()
    return out


@pytest.mark.parametrize("change,expected", [
    (("--type", "Q4_0"), r"--type Q4_K there, Q4_0 now"),
    (("--calib-tokens", "1536"), r"--calib-tokens 1024 there, 1536 now"),
    (("--method", "imatrix"), r"--method gptq there, imatrix now"),
    (("--threads", "1"), r"--threads \d+ there, 1 now"),
])
def test_resume_with_other_options_is_refused(tiny, interrupted, monkeypatch, capsys, change, expected):
    args = flags(tiny)
    for flag, value in zip(change[::2], change[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    before = sorted(p.name for p in (interrupted / "work").iterdir())
    threads = torch.get_num_threads()
    try:
        code, _, err = compress(monkeypatch, capsys, *args, "--out", str(interrupted), "--resume")
    finally:
        torch.set_num_threads(threads)
    assert code == BadOption.exit_code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"error: --resume: {interrupted / 'work'} was made by another run (")
    assert re.search(expected, err[0]), err[0]
    assert err[0].endswith(f"run the interrupted command again with --resume, or remove {interrupted / 'work'} "
                           "to start over")
    assert sorted(p.name for p in (interrupted / "work").iterdir()) == before  # the work folder is left alone


def test_resume_after_the_source_changed_is_refused(tiny, interrupted, monkeypatch, capsys):
    d, _ = tiny
    config = d / "config.json"
    text = config.read_text()
    try:
        config.write_text(text + " ")
        code, _, err = compress(monkeypatch, capsys, *flags(tiny), "--out", str(interrupted), "--resume")
    finally:
        config.write_text(text)
    assert code == 2 and len(err) == 1
    assert re.search(rf"source file {re.escape(str(config.resolve()))} changed since", err[0]), err[0]


def test_a_work_folder_is_not_reused_without_resume(tiny, interrupted, monkeypatch, capsys):
    code, _, err = compress(monkeypatch, capsys, *flags(tiny), "--out", str(interrupted))
    assert code == 2
    assert err == [f"error: {interrupted / 'work'} holds an interrupted compress: pass --resume to continue it, or "
                   "remove the folder to start over"]
    assert (interrupted / "work" / "capture.pt").exists()


def test_nothing_to_resume(tiny, tmp_path, monkeypatch, capsys):
    code, _, err = compress(monkeypatch, capsys, *flags(tiny), "--out", str(tmp_path / "out"), "--resume")
    assert code == 2
    assert err == [f"error: --resume: nothing to resume in {tmp_path / 'out'} (no work/run.json: no interrupted "
                   "compress there)"]


def test_a_failed_run_leaves_nothing_to_resume(tiny, tmp_path, monkeypatch, capsys):
    """A failure (here a full disk while writing) is not an interrupt: the work folder goes, and the space with it."""
    import errno
    import os

    from quantkit.formats import gguf_model

    def full_disk(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "build.gguf")

    monkeypatch.setattr(gguf_model, "write_gguf", full_disk)
    out = tmp_path / "out"
    code, _, err = compress(monkeypatch, capsys, *flags(tiny, "--type", "Q8_0", "--method", "rtn"), "--out", str(out))
    assert code == 1 and err == ["error: build.gguf: No space left on device"]
    assert list(out.iterdir()) == []
    code, _, err = compress(monkeypatch, capsys, *flags(tiny, "--type", "Q8_0", "--method", "rtn"), "--out", str(out),
                            "--resume")
    assert code == 2 and "nothing to resume" in err[0]
