"""The real CLIP BPE tokenizer without a download.

OpenAI's CLIP vocabulary ships inside ``open_clip_torch`` (``bpe_simple_vocab_16e6.txt.gz``). This module turns it
into the ``vocab.json`` + ``merges.txt`` pair that ``transformers.CLIPTokenizer`` reads, so tiny test models and
offline hosts get the exact tokenizer of ``openai/clip-vit-large-patch14`` (49408 tokens, BOS 49406, EOS 49407).
"""
from __future__ import annotations

import gzip
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode table (the standard reversible mapping)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _bpe_source() -> Path:
    try:
        import open_clip
    except ImportError as exc:  # pragma: no cover - dependency listed in requirements
        raise ImportError("open_clip_torch is required for the offline CLIP tokenizer: pip install open_clip_torch") from exc
    return Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


def write_clip_tokenizer_files(directory: str | os.PathLike) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and tokenizer configs for ``CLIPTokenizer`` into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(_bpe_source()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB_SIZE
    files = {
        "vocab.json": json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
        "tokenizer_config.json": json.dumps({
            "model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "do_lower_case": True,
            "tokenizer_class": "CLIPTokenizer"}),
        "special_tokens_map.json": json.dumps({
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}),
    }
    for name, text in files.items():
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, out / name)
    return out


@lru_cache(maxsize=None)
def offline_clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A ``transformers.CLIPTokenizer`` equal to ``openai/clip-vit-large-patch14``'s, built offline.

    ``pad_token="!"`` gives the SD2.x (OpenCLIP) padding convention (id 0).
    """
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="reneg-clip-tok-") as tmp:
        write_clip_tokenizer_files(tmp)
        return CLIPTokenizer.from_pretrained(tmp, pad_token=pad_token)
