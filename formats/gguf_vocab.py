"""The `tokenizer.*` GGUF metadata for a Hugging Face Gemma checkpoint, built from
its `tokenizer.json` (+ `tokenizer_config.json`, `config.json`) with the rules
llama.cpp's converter applies to Gemma 4 (conversion/gemma.py Gemma4Model.set_vocab,
which reads the vocabulary like gguf-py's LlamaHfVocab and the special tokens like
its SpecialVocab with merges):

- tokenizer.ggml.model = "gemma4" (BPE with byte fallback; llama.cpp's gemma4 pre-tokenizer)
- tokens: ids 0..n_base-1 of the BPE model's vocabulary, then added tokens past it, in id order
- scores: -1000 for every token
- token types: <0xXX> -> BYTE; the tokenizer's special tokens (the named bos/eos/unk/sep/pad/cls/mask
  tokens plus `extra_special_tokens`) -> CONTROL; other added tokens past the base vocabulary ->
  USER_DEFINED; everything else NORMAL; the chat-parser tokens in VISIBLE -> USER_DEFINED
- merges as "a b" strings (a space inside a piece is written as U+0120)
- special token ids from tokenizer_config.json (looked up among tokenizer.json's added tokens),
  then from config.json's `*_token_id`
- add_bos / add_eos / add_sep from the post-processor template and tokenizer_config.json,
  the chat template, normalizer flags; add_space_prefix = False and add_bos_token = True last.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from gguf.constants import GGUFValueType

from quantkit.errors import BadFile, UnsupportedModel
from quantkit.formats.gguf_writer import Value, array, boolean, string, u32

TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_BYTE = 1, 3, 4, 6
VISIBLE = {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>'}
SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
ID_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id", "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id", "pad": "tokenizer.ggml.padding_token_id",
    "cls": "tokenizer.ggml.cls_token_id", "mask": "tokenizer.ggml.mask_token_id",
    "eot": "tokenizer.ggml.eot_token_id", "eom": "tokenizer.ggml.eom_token_id",
}
ADD_KEYS = {"bos": "tokenizer.ggml.add_bos_token", "eos": "tokenizer.ggml.add_eos_token", "sep": "tokenizer.ggml.add_sep_token"}
# transformers' GemmaTokenizer defaults for named special tokens missing from tokenizer_config.json
GEMMA_DEFAULTS = {"unk": "<unk>", "bos": "<bos>", "eos": "<eos>", "pad": "<pad>", "mask": "<mask>"}
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise BadFile(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e


def _content(entry) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def vocab_size(directory: Path) -> int:
    """The token count llama.cpp's converter trims `embed_tokens` to (Gemma3Model.modify_tensors):
    entries of the BPE vocabulary plus entries of `added_tokens` (which may count a token twice)."""
    tj = _tokenizer_json(Path(directory))
    return len(tj["model"]["vocab"]) + len(tj.get("added_tokens", []))


def _tokenizer_json(directory: Path) -> dict:
    path = directory / "tokenizer.json"
    tj = _read_json(path)
    if tj is None:
        raise BadFile(f"{directory}: tokenizer.json not found (the GGUF needs the tokenizer)")
    model = tj.get("model") or {}
    if not isinstance(model.get("vocab"), dict):
        raise BadFile(f"{path}: 'model.vocab' is missing or not a token -> id map")
    return tj


def _special_tokens(tc: dict | None) -> list[str]:
    """transformers' `all_special_tokens`: the named tokens, then the extra special tokens."""
    tc = tc or {}
    gemma = str(tc.get("tokenizer_class", "GemmaTokenizer")).removesuffix("Fast") == "GemmaTokenizer"
    out: list[str] = []
    for typ in SPECIAL_TYPES:
        key = f"{typ}_token"
        tok = _content(tc[key]) if key in tc else (GEMMA_DEFAULTS.get(typ) if gemma else None)
        if tok is not None and tok not in out:
            out.append(tok)
    extra = tc.get("extra_special_tokens") or tc.get("additional_special_tokens") or []
    for entry in extra.values() if isinstance(extra, dict) else extra:
        tok = _content(entry)
        if tok is not None and tok not in out:
            out.append(tok)
    return out


def hf_tokenizer_metadata(directory: Path) -> dict[str, Value]:
    directory = Path(directory)
    tj = _tokenizer_json(directory)
    path = directory / "tokenizer.json"
    model = tj["model"]
    if model.get("type") != "BPE" or not model.get("byte_fallback", False) or (tj.get("decoder") or {}).get("type") != "Sequence":
        raise UnsupportedModel(
            f"{path}: expected a Gemma tokenizer (BPE with byte fallback and a Sequence decoder), "
            f"got model type {model.get('type')!r}, byte_fallback={model.get('byte_fallback')}"
        )
    tc = _read_json(directory / "tokenizer_config.json")
    config = _read_json(directory / "config.json") or {}
    base: dict[str, int] = model["vocab"]
    added = [a for a in tj.get("added_tokens", []) if isinstance(a, dict) and "id" in a and "content" in a]
    n_base = len(base)
    full = dict(base)
    full.update((a["content"], int(a["id"])) for a in added)
    by_id = {i: t for t, i in full.items()}
    past = sorted((int(a["id"]), a["content"]) for a in added if int(a["id"]) >= n_base)

    specials = _special_tokens(tc)
    # convert_tokens_to_ids maps a special token missing from the vocabulary to the unknown token's id
    unk_id = full.get(_content((tc or {}).get("unk_token", GEMMA_DEFAULTS["unk"])) or "")
    special_ids = {full.get(t, unk_id) for t in specials} - {None}

    tokens, types = [], []
    for i in range(n_base):
        if i not in by_id:
            raise BadFile(f"{path}: no token has id {i} (ids must run 0..{n_base - 1})")
        t = by_id[i]
        tokens.append(t)
        types.append(TOKEN_BYTE if _BYTE_TOKEN.fullmatch(t) else TOKEN_CONTROL if i in special_ids else TOKEN_NORMAL)
    for _, t in past:
        tokens.append(t)
        types.append(TOKEN_CONTROL if t in specials else TOKEN_USER_DEFINED)
    types = [TOKEN_USER_DEFINED if t in VISIBLE else ty for t, ty in zip(tokens, types)]

    meta: dict[str, Value] = {
        "tokenizer.ggml.model": string("gemma4"),
        "tokenizer.ggml.tokens": array(tokens, GGUFValueType.STRING),
        "tokenizer.ggml.scores": array(np.full(len(tokens), -1000.0, np.float32), GGUFValueType.FLOAT32),
        "tokenizer.ggml.token_type": array(np.array(types, np.int32), GGUFValueType.INT32),
    }
    merges = _merges(model.get("merges"), path)
    if merges:
        meta["tokenizer.ggml.merges"] = array(merges, GGUFValueType.STRING)
    ids, add, lowercase, strip_accents = _special_vocab(tj, tc, config, added)
    for typ, tid in ids.items():
        meta[ID_KEYS[typ]] = u32(tid)
    for typ, flag in add.items():
        if typ in ADD_KEYS:
            meta[ADD_KEYS[typ]] = boolean(flag)
    meta.update(_chat_template(directory, tc))
    if lowercase is not None:
        meta["tokenizer.ggml.normalizer.lowercase"] = boolean(lowercase)
    if strip_accents is not None:
        meta["tokenizer.ggml.normalizer.strip_accents"] = boolean(strip_accents)
    meta["tokenizer.ggml.add_space_prefix"] = boolean(False)
    meta["tokenizer.ggml.add_bos_token"] = boolean(True)
    return meta


def _merges(merges, path: Path) -> list[str]:
    if not merges:
        return []
    if isinstance(merges[0], str):
        return list(merges)
    if isinstance(merges[0], list) and len(merges[0]) == 2:
        # pairs (tokenizers >= 0.20): a space inside a piece would split the "a b" string, so shift it to U+0120
        return [" ".join(p.replace(" ", "\u0120") for p in pair) for pair in merges]
    raise BadFile(f"{path}: 'model.merges' has an unknown format")


def _normalizer_flags(norm: dict | None, flags: dict) -> None:
    if not isinstance(norm, dict):
        return
    kind = norm.get("type")
    if kind == "Lowercase":
        flags["lowercase"] = True
    elif kind == "StripAccents":
        flags["strip_accents"] = True
    elif kind == "BertNormalizer":
        for k, src in (("lowercase", "lowercase"), ("strip_accents", "strip_accents")):
            if src in norm:
                flags[k] = norm[src]
    elif kind == "Sequence":
        for n in norm.get("normalizers", []):
            _normalizer_flags(n, flags)


def _special_vocab(tj: dict, tc: dict | None, config: dict, added: list[dict]):
    """Special token ids, add_* flags, chat template and normalizer flags (gguf-py SpecialVocab rules)."""
    types = list(SPECIAL_TYPES)
    add: dict[str, bool] = {}
    ids: dict[str, int] = {}
    flags: dict = {}
    _normalizer_flags(tj.get("normalizer"), flags)
    tc = dict(tc) if tc else None
    named = {t: _content((tc or {}).get(f"{t}_token")) for t in ("bos", "cls", "eos", "sep")}
    if not named["bos"] and named["cls"] and tc:
        tc["bos_token"] = named["bos"] = named["cls"]
    if not named["eos"] and named["sep"] and tc:
        tc["eos_token"] = named["eos"] = named["sep"]
    post = tj.get("post_processor")
    for proc in (post.get("processors", [post]) if isinstance(post, dict) else []):
        kind = proc.get("type")
        if kind == "ByteLevel":
            add.setdefault("bos", False)
            add.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            add.update(bos=True, eos=True, sep=True)
            if not named["cls"] and tc:
                tc["cls_token"] = named["cls"] = proc.get("cls", [named["bos"]])[0]
            if not named["sep"] and tc:
                tc["sep_token"] = named["sep"] = proc.get("sep", [named["eos"]])[0]
        elif kind == "TemplateProcessing":
            _template_flags(proc, tc, named, add, types)
    if tc:
        for typ in types:
            flag = tc.get(f"add_{typ}_token")
            if isinstance(flag, bool) and typ not in add:
                add[typ] = flag
            tok = _content(tc.get(f"{typ}_token"))
            if tok is None:
                continue
            tid = next((a["id"] for a in added if a.get("content") == tok), None)
            if isinstance(tid, int) and tid >= 0 and typ not in ids:
                ids[typ] = tid
    text = config.get("text_config") or {}
    for typ in types:
        tid = config.get(f"{typ}_token_id")
        if tid is None:
            tid = text.get(f"{typ}_token_id")
        if isinstance(tid, int) and not isinstance(tid, bool) and tid >= 0 and typ not in ids:
            ids[typ] = tid
    return ids, add, flags.get("lowercase"), flags.get("strip_accents")


def _special_id(item: dict) -> str | None:
    return (item.get("SpecialToken") or {}).get("id")


def _template_flags(proc: dict, tc: dict | None, named: dict, add: dict, types: list) -> None:
    """Read add_bos / add_eos / add_sep off a simple TemplateProcessing (SpecialVocab's crude parse)."""
    single, pair = proc.get("single", []), proc.get("pair", [])
    first = last = None
    if len(single) > 1:
        first = _special_id(single[0])
        if first:
            if not tc:
                named["bos"] = first
            elif first not in (named["bos"], named["cls"]):
                if not named["bos"]:
                    tc["bos_token"] = named["bos"] = first
                if not named["cls"]:
                    tc["cls_token"] = named["cls"] = first
            add["bos"] = first in (named["bos"], named["cls"])
        last = _special_id(single[-1])
        if last:
            if not tc:
                named["eos"] = last
            elif last != named["eos"]:
                if "eot" not in types:
                    types.append("eot")
                    tc["eot_token"] = named["eos"]
                elif "eom" not in types:
                    types.append("eom")
                    tc["eom_token"] = named["eos"]
                tc["eos_token"] = named["eos"] = last
            add["eos"] = last == named["eos"]
    if not pair:
        return
    start = 1 if first and _special_id(pair[0]) == first else 0
    stop = -1 if last and _special_id(pair[-1]) == last else None
    middle = pair[start:stop]
    if not middle:
        return
    a, b = (middle[0].get("Sequence") or {}).get("id"), (middle[-1].get("Sequence") or {}).get("id")
    middle = middle[1:-1]
    if a == "A" and b == "B" and middle:
        add_sep = False
        entry = _special_id(middle[0])
        if entry and entry in (named["sep"], named["eos"]) and not last:
            add_sep = True
        if len(middle) == 2 and _special_id(middle[1]) in (named["sep"], named["eos"]) and _special_id(middle[1]):
            add_sep = True
        add["sep"] = add_sep
        if add_sep and not named["sep"] and tc:
            tc["sep_token"] = named["eos"]


def _chat_template(directory: Path, tc: dict | None) -> dict[str, Value]:
    if tc is None:
        return {}
    template = tc.get("chat_template")
    if "chat_template" not in tc:
        jinja, js = directory / "chat_template.jinja", directory / "chat_template.json"
        if jinja.is_file():
            template = jinja.read_text(encoding="utf-8")
            extra = sorted((directory / "additional_chat_templates").glob("*.jinja"))
            if extra:
                template = [{"name": "default", "template": template}] + [
                    {"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in extra
                ]
        elif js.is_file():
            template = (_read_json(js) or {}).get("chat_template")
    if isinstance(template, str):
        return {"tokenizer.chat_template": string(template)}
    if not isinstance(template, list):
        return {}
    out: dict[str, Value] = {}
    names, default = [], None
    for choice in template:
        name = "".join(c if c.isascii() and c.isalnum() else "_" for c in str(choice.get("name", "")))
        body = choice.get("template")
        if not name or body is None:
            continue
        if name == "default":
            default = body
        else:
            names.append(name)
            out[f"tokenizer.chat_template.{name}"] = string(body)
    if names:
        out["tokenizer.chat_templates"] = array(sorted(set(names)), GGUFValueType.STRING)
    if default is not None:
        out["tokenizer.chat_template"] = string(default)
    return out
