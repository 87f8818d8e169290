"""Tokenizers: from a Hugging Face `tokenizer.json` or from a GGUF's `tokenizer.ggml.*`.

Gemma's GGUF vocabulary is SentencePiece-style (`tokenizer.ggml.model = "llama"`):
llama.cpp tokenizes it with `llm_tokenizer_spm`, which (1) splits the raw text at
user-defined tokens (token_type 4: runs of newlines and spaces), (2) escapes ' ' to
U+2581, (3) repeatedly merges the adjacent pair whose concatenation is the
highest-scoring vocabulary entry (leftmost on ties), and (4) falls back to <0xXX>
byte tokens for pieces that are not in the vocabulary.

That procedure is byte-pair encoding with merges ranked by the score of their
result, so it is expressed here as a `tokenizers` BPE model (Rust, fast) whose merge
list is derived from the vocabulary and scores: every split (a, b) of a token t with
a and b in the vocabulary is a merge of rank order(-score(t)). Gemma 4 GGUFs
(`tokenizer.ggml.model = "gemma4"`) carry their merges explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

from quantkit.errors import BadFile

SPM_SPACE = "\u2581"
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class TextTokenizer:
    """Wraps a `tokenizers.Tokenizer` with the BOS policy of the model."""

    tok: Tokenizer
    bos_id: int
    add_bos: bool = True

    def encode(self, text: str, bos: bool | None = None) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if self.add_bos if bos is None else bos:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)


def from_tokenizer_json(path: Path, bos_id: int = 2, add_bos: bool = True) -> TextTokenizer:
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise BadFile(f"{path}: not a valid tokenizer.json ({e})") from e
    return TextTokenizer(tok, bos_id, add_bos)


@dataclass(frozen=True)
class GGUFVocab:
    """The `tokenizer.ggml.*` fields of a GGUF, as plain Python/numpy values."""

    model: str
    tokens: list[str]
    scores: np.ndarray | None
    token_types: np.ndarray | None
    merges: list[str] | None
    bos_id: int
    add_bos: bool
    add_space_prefix: bool


def spm_merges(tokens: list[str], scores: np.ndarray, types: np.ndarray) -> list[tuple[str, str]]:
    """Merge list equivalent to llama.cpp's score-greedy SPM tokenizer (see module doc)."""
    mergeable = {t: i for i, t in enumerate(tokens) if types[i] in (TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED)}
    ranked = []
    for t, i in mergeable.items():
        for k in range(1, len(t)):
            a, b = t[:k], t[k:]
            if a in mergeable and b in mergeable:
                ranked.append((-float(scores[i]), i, mergeable[a], a, b))
    ranked.sort()
    return [(a, b) for *_, a, b in ranked]


def from_gguf_vocab(v: GGUFVocab, where: str = "GGUF") -> TextTokenizer:
    if not isinstance(v.tokens, list) or not all(isinstance(t, str) for t in v.tokens):
        raise BadFile(f"{where}: tokenizer.ggml.tokens is not an array of strings")
    for key, arr in (("scores", v.scores), ("token_type", v.token_types)):
        if arr is not None and (not isinstance(arr, np.ndarray) or arr.shape != (len(v.tokens),)):
            raise BadFile(f"{where}: tokenizer.ggml.{key} is not a numeric array with one entry per token ({len(v.tokens)})")
    if v.merges is not None and (not isinstance(v.merges, list) or not all(isinstance(m, str) for m in v.merges)):
        raise BadFile(f"{where}: tokenizer.ggml.merges is not an array of strings")
    if not 0 <= v.bos_id < len(v.tokens):
        raise BadFile(f"{where}: tokenizer.ggml.bos_token_id {v.bos_id} is not a token id (the vocabulary has {len(v.tokens)})")
    types = v.token_types if v.token_types is not None else np.full(len(v.tokens), TOKEN_NORMAL)
    vocab = {t: i for i, t in enumerate(v.tokens)}
    if len(vocab) != len(v.tokens):
        # Duplicate token texts: keep the first id, as llama.cpp's text_to_token map does.
        vocab = {}
        for i, t in enumerate(v.tokens):
            vocab.setdefault(t, i)
    if v.model == "llama":
        if v.scores is None:
            raise BadFile(f"{where}: tokenizer.ggml.scores is required for a SentencePiece ('llama') vocabulary")
        merges = spm_merges(v.tokens, v.scores, types)
    elif v.merges is not None:
        merges = [tuple(m.split(" ", 1)) for m in v.merges]
    else:
        raise BadFile(f"{where}: tokenizer.ggml.model {v.model!r} needs tokenizer.ggml.merges")
    unk = next((t for i, t in enumerate(v.tokens) if types[i] == TOKEN_UNKNOWN), None)
    try:
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=False))
    except Exception as e:  # tokenizers raises a bare Exception, e.g. for a merge of unknown tokens
        raise BadFile(f"{where}: the tokenizer.ggml.* vocabulary is inconsistent ({e})") from None
    steps = [normalizers.Replace(" ", SPM_SPACE)]
    if v.add_space_prefix:
        steps.insert(0, normalizers.Prepend(" "))
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence([decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    # llama.cpp splits raw text at user-defined tokens before tokenizing the pieces
    # (tokenizer_st_partition); control tokens are only parsed with parse_special=True.
    user = [AddedToken(t, normalized=False, special=False) for i, t in enumerate(v.tokens) if types[i] == TOKEN_USER_DEFINED]
    tok.add_tokens(user)
    return TextTokenizer(tok, v.bos_id, v.add_bos)
