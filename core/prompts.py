"""Prompt files and prompt sets: local ``.txt``/``.jsonl``/``.json``/``.csv``/``.tsv`` files, folders, hub sets.

A prompt set is a list of :class:`PromptItem` (text + group, e.g. the HPSv2 benchmark style). Training uses only
the texts (:func:`load_prompts`); evaluation groups its means by ``group`` (:func:`load_prompt_set`).

Hub sets (downloaded with ``huggingface_hub``, cached by it):

* ``hpsv2`` / ``hpsv2:photo,anime``: the HPSv2 benchmark, dataset ``zhwang/HPDv2``, files
  ``benchmark/{anime,concept-art,paintings,photo}.json`` (one group per style);
* ``parti`` / ``parti-prompts``: dataset ``nateraw/parti-prompts``, ``PartiPrompts.tsv`` (grouped by Category).
"""
from __future__ import annotations

import csv
import io
import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from .errors import RenegError

PROMPT_KEYS = ("prompt", "caption", "text")
GROUP_KEYS = ("style", "group", "category")
SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".tsv")
MAX_PROMPT_FILE_BYTES = 256 * 1024 * 1024

HPSV2_REPO = "zhwang/HPDv2"
HPSV2_STYLES = ("anime", "concept-art", "paintings", "photo")
PARTI_REPO = "nateraw/parti-prompts"
PARTI_FILE = "PartiPrompts.tsv"


@dataclass(frozen=True)
class PromptItem:
    """One prompt and the group (style/category) it is reported under."""

    text: str
    group: str = "all"


def _clean(text: object) -> str:
    return " ".join(str(text).split())


def _from_record(record: object, where: str, default_group: str) -> Optional[PromptItem]:
    if isinstance(record, str):
        return PromptItem(_clean(record), default_group) if record.strip() else None
    if isinstance(record, dict):
        lower = {str(k).lower(): v for k, v in record.items()}
        key = next((k for k in PROMPT_KEYS if k in lower), None)
        if key is None:
            raise RenegError(f"{where}: record has no prompt field (one of {', '.join(PROMPT_KEYS)}); "
                             f"keys found: {sorted(lower)}.")
        text = lower[key]
        if not isinstance(text, str):
            raise RenegError(f"{where}: the {key!r} field is {_kind(text)}, not text. Give every record a prompt "
                             f"string (or drop the record).")
        group = next((lower[k] for k in GROUP_KEYS if lower.get(k) not in (None, "")), default_group)
        if not isinstance(group, (str, int, float)):
            raise RenegError(f"{where}: the group/style field is {_kind(group)}, not text.")
        return PromptItem(_clean(text), _clean(group)) if text.strip() else None
    raise RenegError(f"{where}: expected a prompt string or an object with a 'prompt' field, "
                     f"got {_kind(record)}.")


def _kind(value: object) -> str:
    return {type(None): "null", bool: "true/false", int: "a number", float: "a number", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _json_loads(text: str):
    """``json.loads`` that turns absurd nesting into a ValueError instead of a RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested deeper than Python can read") from None


def _parse_json(text: str, path: Path, group: str) -> list[PromptItem]:
    try:
        data = _json_loads(text)
    except ValueError as exc:
        raise RenegError(f"{path}: invalid JSON ({exc}). Use a list of prompts or one JSON object per line "
                         "(.jsonl).") from exc
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        # {"style": [prompts...], ...}
        return [it for g, values in data.items() for i, v in enumerate(values)
                if (it := _from_record(v, f"{path}[{g}][{i}]", str(g))) is not None]
    if not isinstance(data, list):
        raise RenegError(f"{path}: a .json prompt file must hold a list of prompts (or style -> list).")
    return [it for i, v in enumerate(data) if (it := _from_record(v, f"{path}[{i}]", group)) is not None]


def _parse_jsonl(text: str, path: Path, group: str) -> list[PromptItem]:
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = _json_loads(line)
        except ValueError as exc:
            raise RenegError(f"{path}:{n}: invalid JSON line ({getattr(exc, 'msg', exc)}). Each line must be a "
                             "JSON string or an "
                             "object with a 'prompt' field.") from exc
        item = _from_record(record, f"{path}:{n}", group)
        if item is not None:
            items.append(item)
    return items


def _parse_table(text: str, path: Path, group: str, delimiter: str) -> list[PromptItem]:
    try:
        rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if any(c.strip() for c in r)]
    except csv.Error as exc:  # e.g. a field over csv's size limit (an unclosed quote swallowing the file)
        raise RenegError(f"{path}: not a readable {'CSV' if delimiter == ',' else 'TSV'} table ({exc}); check for "
                         "an unclosed quote.") from exc
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    key = next((k for k in PROMPT_KEYS if k in header), None)
    if key is None:  # no header: the prompt is the first column
        return [PromptItem(_clean(r[0]), group) for r in rows if r and r[0].strip()]
    p_col = header.index(key)
    g_col = next((header.index(k) for k in GROUP_KEYS if k in header), None)
    items = []
    for r in rows[1:]:
        if p_col < len(r) and r[p_col].strip():
            g = r[g_col].strip() if g_col is not None and g_col < len(r) and r[g_col].strip() else group
            items.append(PromptItem(_clean(r[p_col]), _clean(g)))
    return items


def read_prompt_file(path: str | Path, group: Optional[str] = None) -> list[PromptItem]:
    """Prompts of one local file (raises :class:`RenegError` if missing, unreadable or empty)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise RenegError(f"Prompt file not found: {p}. Pass a .txt (one prompt per line), .jsonl, .json, .csv "
                         "or .tsv file.") from None
    except OSError as exc:
        raise RenegError(f"{p}: cannot be read ({exc.strerror or exc}).") from exc
    if stat.S_ISDIR(st.st_mode):
        raise RenegError(f"{p} is a folder; pass it as the prompt folder or name one prompt file in it.")
    if not stat.S_ISREG(st.st_mode):
        raise RenegError(f"{p} is not a regular file (a FIFO, socket or device); pass a prompt file.")
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise RenegError(f"{p}: unsupported prompt file type '{p.suffix}'; use one of {', '.join(SUFFIXES)}.")
    if st.st_size > MAX_PROMPT_FILE_BYTES:
        raise RenegError(f"{p}: {st.st_size:,} bytes is over the {MAX_PROMPT_FILE_BYTES:,}-byte limit for a prompt "
                         "file; split it or pass a folder of smaller files.")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RenegError(f"{p}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); save it as UTF-8.") from exc
    except OSError as exc:
        raise RenegError(f"{p}: cannot be read ({exc.strerror or exc}).") from exc
    if "\x00" in text:
        raise RenegError(f"{p}: holds NUL bytes, so it is not a text file; pass a prompt file.")
    g = group or (p.stem if suffix == ".json" else "all")
    if suffix == ".txt":
        items = [PromptItem(_clean(line), g) for line in text.splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
    elif suffix == ".jsonl":
        items = _parse_jsonl(text, p, g)
    elif suffix == ".json":
        items = _parse_json(text, p, g)
    else:
        items = _parse_table(text, p, g, "," if suffix == ".csv" else "\t")
    if not items:
        raise RenegError(f"{p}: contains no prompts. Put one prompt per line (.txt) or prompt records "
                         "(.jsonl/.json/.csv/.tsv).")
    return items


def read_prompt_folder(path: str | Path) -> list[PromptItem]:
    """All prompt files of a folder, each file one group (its stem), e.g. a downloaded HPDv2 ``benchmark/``."""
    p = Path(path).expanduser()
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)
    if not files:
        raise RenegError(f"{p}: folder has no prompt files ({', '.join(SUFFIXES)}).")
    return [it for f in files for it in read_prompt_file(f, group=f.stem)]


def load_prompts(path: str | Path) -> list[str]:
    """Prompt texts of a file or folder (training input)."""
    p = Path(path).expanduser()
    items = read_prompt_folder(p) if p.is_dir() else read_prompt_file(p)
    return [it.text for it in items]


def _hub_download(repo_id: str, filename: str) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset")


#: Replaceable for tests: ``(repo_id, filename) -> local path``.
hub_download: Callable[[str, str], str] = _hub_download


def _fetch(repo_id: str, filename: str, what: str) -> Path:
    try:
        return Path(hub_download(repo_id, filename))
    except Exception as exc:  # network, offline mode, missing file: one actionable message
        cause = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise RenegError(
            f"Could not get the {what} prompt set ({repo_id}/{filename}) from the Hugging Face hub: {cause}. "
            f"Offline? Download it elsewhere (`hf download {repo_id} {filename} --repo-type dataset "
            f"--local-dir DIR`) and pass the local file or folder instead.") from exc


def hpsv2_benchmark(styles: Iterable[str] = HPSV2_STYLES) -> list[PromptItem]:
    """The HPSv2 benchmark prompts (``zhwang/HPDv2`` ``benchmark/<style>.json``), grouped by style."""
    items: list[PromptItem] = []
    for style in styles:
        if style not in HPSV2_STYLES:
            raise RenegError(f"Unknown HPSv2 style {style!r}; valid: {', '.join(HPSV2_STYLES)}.")
        items += read_prompt_file(_fetch(HPSV2_REPO, f"benchmark/{style}.json", "HPSv2"), group=style)
    return items


def parti_prompts() -> list[PromptItem]:
    """Parti-Prompts (``nateraw/parti-prompts``), grouped by Category."""
    return read_prompt_file(_fetch(PARTI_REPO, PARTI_FILE, "Parti-Prompts"))


def limit_per_group(items: list[PromptItem], limit: Optional[int]) -> list[PromptItem]:
    """The first ``limit`` prompts of each group (order kept); all when ``limit`` is falsy."""
    if not limit:
        return list(items)
    seen: dict[str, int] = {}
    out = []
    for it in items:
        if seen.get(it.group, 0) < limit:
            seen[it.group] = seen.get(it.group, 0) + 1
            out.append(it)
    return out


def load_prompt_set(spec: str, limit_per_group_: Optional[int] = None) -> list[PromptItem]:
    """A prompt set by spec: a local file/folder, ``hpsv2[:style,...]`` or ``parti``; optionally truncated."""
    p = Path(spec).expanduser()
    if p.is_dir():
        items = read_prompt_folder(p)
    elif p.is_file():
        items = read_prompt_file(p)
    else:
        name, _, arg = spec.partition(":")
        name = name.strip().lower()
        if name in ("hpsv2", "hpdv2", "hpsv2-benchmark"):
            items = hpsv2_benchmark([s.strip() for s in arg.split(",") if s.strip()] or HPSV2_STYLES)
        elif name in ("parti", "parti-prompts", "partiprompts"):
            items = parti_prompts()
        else:
            raise RenegError(f"Prompt set {spec!r} is neither an existing file/folder nor a known hub set "
                             "('hpsv2', 'hpsv2:photo,anime', 'parti').")
    return limit_per_group(items, limit_per_group_)
