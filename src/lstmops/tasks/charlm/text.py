"""Text data for the charlm task: ingest (source -> snapshot), validate, prepare (split + vocabulary).

The text counterpart of ``ingest.py``, ``validate.py`` and ``prepare.py``. A corpus is read whole:
a character model's tokens are held in memory for training anyway, and one file of text per
snapshot row keeps each file's characters together and in order.

- ingest: every source file decoded with ``charlm.encoding`` (strict), ``\\r\\n`` turned into
  ``\\n``, written as a Parquet snapshot (columns ``file``, ``text``; one row per file, in order)
  whose bytes depend only on the text, so DVC sees an unchanged corpus as unchanged.
- validate: checks on the corpus as the model will see it (lowercased if asked); JSON + HTML report.
- prepare: the files joined by ``\\n``, split into contiguous train | validation | test spans, the
  vocabulary taken from the training span only (id 0 is the unknown symbol), the whole text
  encoded as ``tokens.npy`` plus ``meta.json``.
"""

from __future__ import annotations

import glob
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lstmops.tasks.charlm.settings import CharLMConfig
from lstmops.data.split import chronological_split
from lstmops.data.sources import is_s3, s3_error
from lstmops.data.check_report import check_rows, publish, verdict
from lstmops.errors import ConfigError, DataError
from lstmops.io import atomic_dir, atomic_path, read_json, write_json

TEXT_SUFFIX = ".txt"
UNKNOWN = "\ufffd"  # id 0: a character of the validation/test spans that the training span lacks
MIN_SPAN_CHARS = 100  # per span: fewer next-character predictions make a bits-per-char figure noise
MAGIC = re.compile(r"[*?[]")  # a source with these is a glob
TOP_CHARS = 10  # most frequent characters recorded in the validation report
# Unicode category Cc minus \t and \n: NUL, lone \r, form feed, escape, DEL, C1 controls.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
SCHEMA = pa.schema([("file", pa.string()), ("text", pa.large_string())])  # large: a file may exceed 2 GiB


@dataclass(frozen=True)
class TextSnapshot:
    """What ingest wrote: files read, and characters in them (after newline normalization)."""

    files: int
    chars: int


# --- ingest -------------------------------------------------------------------------------------


def _local_files(source: str, root: Path) -> list[tuple[Path, str]]:
    """(path, name relative to the source) of a local source. A directory gives its ``*.txt``
    files (not subdirectories'); a glob or a file named outright is taken whatever its suffix,
    since the user spelled it out. A glob's files are named relative to its literal directory."""
    path = Path(source) if Path(source).is_absolute() else root / source
    if MAGIC.search(source):
        parts = Path(source).parts
        base = root / Path(*parts[: next(i for i, p in enumerate(parts) if MAGIC.search(p))])
        files = [f for f in (root / p for p in glob.glob(source, root_dir=root)) if f.is_file()]
        if not files:
            raise DataError(f"{source}: no files match")
        return sorted(((f, f.relative_to(base).as_posix()) for f in files), key=lambda pair: pair[1])
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.is_file() and p.suffix.lower() == TEXT_SUFFIX), key=lambda p: p.name
        )
        if not files:
            raise DataError(f"{source}: directory has no {TEXT_SUFFIX} files")
        return [(f, f.name) for f in files]
    if not path.is_file():
        raise DataError(f"{source}: source file not found")
    return [(path, path.name)]


def _local_texts(source: str, root: Path) -> list[tuple[str, str, bytes]]:
    """(label for messages, name relative to the source, bytes) of each local file, in order."""
    out = []
    for path, name in _local_files(source, root):
        try:
            out.append((str(path), name, path.read_bytes()))
        except OSError as exc:
            raise DataError(f"{path}: cannot be read ({exc.strerror or exc.__class__.__name__})") from None
    return out


def _s3_texts(source: str) -> list[tuple[str, str, bytes]]:
    """The objects of ``s3://bucket/key`` (any suffix) or ``s3://bucket/prefix/`` (its ``.txt``
    objects, sorted by key), read into memory; errors mapped as for the table sources."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = source[len("s3://") :].partition("/")
    try:
        client = boto3.client("s3")
        if key and not key.endswith("/"):
            keys = [(key, PurePosixPath(key).name)]
        else:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            found = sorted(o["Key"] for page in pages for o in page.get("Contents", []))
            keys = [(k, k[len(key) :]) for k in found if k.lower().endswith(TEXT_SUFFIX)]
            if not keys:
                raise DataError(f"{source}: no {TEXT_SUFFIX} objects under this prefix")
        return [
            (f"s3://{bucket}/{k}", name, client.get_object(Bucket=bucket, Key=k)["Body"].read()) for k, name in keys
        ]
    except (BotoCoreError, ClientError) as exc:
        raise s3_error(source, exc) from None


def decode(raw: bytes, encoding: str, label: str) -> str:
    """Strict decoding (a wrong encoding must not become silent mojibake), a leading BOM dropped,
    Windows newlines made ``\\n``. A lone ``\\r`` is kept: validation reports it as a control character."""
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(f"{label}: not valid {encoding} at byte {exc.start} (set charlm.encoding)") from None
    except LookupError:
        raise ConfigError(f"charlm.encoding: unknown encoding {encoding!r}") from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def write_snapshot(names: list[str], texts: list[str], path: Path) -> None:
    """Parquet with every option fixed and no pandas or timestamp metadata: equal texts give equal
    bytes (under the pinned pyarrow, whose version is in the file footer)."""
    table = pa.Table.from_arrays([pa.array(names, pa.string()), pa.array(texts, pa.large_string())], schema=SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(
            table, tmp, compression="zstd", compression_level=3, use_dictionary=False,
            write_statistics=False, row_group_size=max(1, len(names)),
        )  # fmt: skip


def ingest_text(cfg: CharLMConfig, root: Path, out: Path) -> TextSnapshot:
    """Read ``cfg.source`` (a file, a directory's ``*.txt``, a glob, or s3:// key / prefix) and
    write the snapshot at ``out``; it is replaced only once every file has decoded."""
    raw = _s3_texts(cfg.source) if is_s3(cfg.source) else _local_texts(cfg.source, root)
    texts = [decode(data, cfg.encoding, label) for label, _, data in raw]
    write_snapshot([name for _, name, _ in raw], texts, out)
    return TextSnapshot(files=len(texts), chars=sum(map(len, texts)))


# --- reading the snapshot -----------------------------------------------------------------------


def read_snapshot(snapshot: Path) -> tuple[list[str], list[str]]:
    """(file names, texts) in order."""
    if not Path(snapshot).is_file():
        raise DataError(f"{snapshot}: text snapshot not found (run ingest first)")
    try:
        table = pq.read_table(snapshot, columns=["file", "text"])
    except (OSError, KeyError, pa.ArrowException) as exc:
        raise DataError(f"{snapshot}: not a text snapshot (columns file, text): {exc}") from None
    return table.column("file").to_pylist(), table.column("text").to_pylist()


def corpus(texts: list[str], lowercase: bool) -> str:
    """The one string the model sees: files in order, a newline between them, lowercased if asked.
    Validation and prepare both use it, so ``min_chars`` judges exactly what is prepared."""
    text = "\n".join(texts)
    return text.lower() if lowercase else text


# --- validate -----------------------------------------------------------------------------------


def _shown(ch: str) -> str:
    """A character as a report shows it: printable ones as themselves, others escaped."""
    return ch if (ch.isprintable() and not ch.isspace()) or ch == " " else repr(ch)[1:-1]


def _first_control(names: list[str], texts: list[str]) -> tuple[str, str] | None:
    """(character, file:line:column) of the first control character, lines and columns from 1, as
    an editor counts them in the ingested file (control characters are unchanged by lowercasing)."""
    for name, text in zip(names, texts, strict=True):
        found = CONTROL.search(text)
        if found:
            pos = found.start()
            line = text.count("\n", 0, pos) + 1
            column = pos - (text.rfind("\n", 0, pos) + 1) + 1
            return found.group(), f"{name}:{line}:{column}"
    return None


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    """A check as the table validation reports one (``success``), so the registry reads both alike."""
    return {"check": name, "success": passed, "detail": detail}


def text_checks(cfg: CharLMConfig, names: list[str], texts: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(checks, counts). A text with nothing but whitespace fails only ``not_empty``: the other
    checks would just restate it."""
    text = corpus(texts, cfg.lowercase)
    freq = Counter(text)
    counts = {
        "files": len(texts),
        "chars": len(text),
        "lines": sum(t.count("\n") + (1 if t and not t.endswith("\n") else 0) for t in texts),
        "vocabulary": len(freq),
        "top_chars": [[ch, n] for ch, n in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CHARS]],
    }
    if not text.strip():
        return [_check("not_empty", False, f"the text is empty or whitespace only ({len(texts)} file(s))")], counts
    checks = [_check("not_empty", True, f"{len(text):,} characters in {len(texts)} file(s)")]
    short = len(text) < cfg.min_chars
    checks.append(_check("min_chars", not short, f"{len(text):,} characters, "
                         f"{'fewer than' if short else 'at least'} charlm.min_chars={cfg.min_chars:,}"))  # fmt: skip
    wide = len(freq) > cfg.max_vocab
    rarest = ", ".join(f"'{_shown(ch)}' x{n}" for ch, n in sorted(freq.items(), key=lambda kv: (kv[1], kv[0]))[:5])
    checks.append(_check("max_vocab", not wide, f"{len(freq)} distinct characters, "
                         f"{'more than' if wide else 'at most'} charlm.max_vocab={cfg.max_vocab}"
                         + (f" (rarest: {rarest})" if wide else "")))  # fmt: skip
    controls = sum(n for ch, n in freq.items() if CONTROL.fullmatch(ch))
    first = _first_control(names, texts) if controls else None
    detail = "no control characters besides newline and tab"
    if first:
        detail = (f"{controls:,} control character(s) other than newline and tab, "
                  f"the first '{_shown(first[0])}' at {first[1]} (file:line:column)")  # fmt: skip
    checks.append(_check("control_chars", not controls, detail))
    return checks, counts


def validate_text(cfg: CharLMConfig, snapshot: Path, report: Path, label: str) -> list[dict[str, Any]]:
    """Check the text snapshot; write the JSON report and its HTML view (``report`` with .html),
    then raise ``ValidationFailed`` (one line per failed check, prefixed by ``label``) on a failure.

    Great Expectations is not used here: its expectations judge the columns of a table, row by row,
    while these checks are over one string (its length, its set of characters, where a control
    character sits by line and column). Expressing them as GX expectations would mean exploding
    the text into a one-character-per-row frame for no gain in what is checked or reported."""
    names, texts = read_snapshot(snapshot)
    checks, counts = text_checks(cfg, names, texts)
    return publish(report, label, checks, counts, render_html)


def render_html(summary: dict[str, Any]) -> str:
    """A self-contained page: verdict, counts, checks (failed first), most frequent characters."""
    from html import escape

    counts = summary["counts"]
    rows = check_rows(summary["checks"])
    top = "".join(f"<tr><td><code>{escape(_shown(ch))}</code></td><td>{n:,}</td></tr>" for ch, n in counts["top_chars"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Text validation: {escape(summary["source"])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1em}}td,th{{border:1px solid #ccc;padding:4px 8px}}
tr.fail{{background:#fdd}}tr.pass{{background:#efe}}h1 span{{color:{"#070" if summary["success"] else "#b00"}}}</style></head>
<body><h1>Text validation <span>{verdict(summary)}</span></h1>
<p>Source: <code>{escape(summary["source"])}</code>: {counts["files"]} file(s), {counts["chars"]:,} characters,
{counts["lines"]:,} lines, {counts["vocabulary"]} distinct characters.</p>
<table><tr><th>result</th><th>check</th><th>detail</th></tr>{rows}</table>
<table><tr><th>most frequent</th><th>count</th></tr>{top}</table></body></html>
"""


# --- prepare ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextPrepared:
    """The prepared text: train is ``tokens[:train_end]``, validation ``[train_end:val_end]``,
    test ``[val_end:length]``; ``vocab[i]`` is the character of id ``i`` (``vocab[0]`` unknown)."""

    vocab: list[str]
    lowercase: bool
    train_end: int
    val_end: int
    length: int
    unknown_in_val: int
    unknown_in_test: int

    @classmethod
    def load(cls, directory: Path) -> TextPrepared:
        meta = Path(directory) / "meta.json"
        if not meta.is_file():
            raise DataError(f"{meta}: prepared text not found (run prepare first)")
        return cls(**read_json(meta))

    def encode(self, text: str) -> np.ndarray:
        """Ids of ``text`` (lowercased as the training text was); unseen characters are 0."""
        return encode_text(text.lower() if self.lowercase else text, self.vocab)

    def decode(self, ids: list[int] | np.ndarray) -> str:
        """The characters of ``ids``, through code points (a whole span decodes in milliseconds)."""
        points = np.array([ord(ch) for ch in self.vocab], dtype="<u4")
        return points[np.asarray(ids, dtype=np.int64)].tobytes().decode("utf-32-le")


def load_tokens(directory: Path) -> np.ndarray:
    """The whole text as ids (uint8 or uint16)."""
    return np.load(Path(directory) / "tokens.npy")


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    if vocab_size > 1 << 16:
        raise DataError(f"vocabulary of {vocab_size} characters does not fit uint16 ids (lower charlm.max_vocab)")
    return np.uint8 if vocab_size <= 1 << 8 else np.uint16


def encode_text(text: str, vocab: list[str]) -> np.ndarray:
    """Ids by code point: ``vocab[1:]`` is sorted, so a binary search maps the whole text at once."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    known = np.array([ord(ch) for ch in vocab[1:]], dtype=np.uint32)
    at = np.searchsorted(known, points)
    hit = known[np.minimum(at, len(known) - 1)] == points if len(known) else np.zeros(len(points), bool)
    return np.where(hit, at + 1, 0).astype(token_dtype(len(vocab)))


def check_spans(train: int, val: int, test: int) -> None:
    """Each span needs ``MIN_SPAN_CHARS``: a validation or test bits-per-char over fewer characters
    is noise (per-character losses spread ~2 bits, so 100 characters already leave +-0.2), and a
    training span that short teaches nothing."""
    total = train + val + test
    for span, size, setting in (
        ("validation", val, "val_fraction"),
        ("test", test, "test_fraction"),
        ("training", train, None),
    ):
        if size < MIN_SPAN_CHARS:
            hint = f"a larger charlm.{setting}" if setting else "smaller charlm.val_fraction / test_fraction"
            raise DataError(
                f"the {span} span has {size} of {total:,} characters, fewer than {MIN_SPAN_CHARS}; use more text or {hint}"
            )


def prepare_text(cfg: CharLMConfig, snapshot: Path, out_dir: Path) -> TextPrepared:
    """Split the corpus into contiguous spans (nothing later leaks into training), build the
    vocabulary from the training span, encode everything; write ``tokens.npy`` and ``meta.json``
    into ``out_dir`` as a whole. A literal U+FFFD in the text is the unknown symbol too (id 0)."""
    _, texts = read_snapshot(snapshot)
    text = corpus(texts, cfg.lowercase)
    split = chronological_split(len(text), cfg.val_fraction, cfg.test_fraction)
    check_spans(split.train_end, split.val_end - split.train_end, split.length - split.val_end)
    vocab = [UNKNOWN, *sorted(set(text[: split.train_end]) - {UNKNOWN})]
    tokens = encode_text(text, vocab)
    prepared = TextPrepared(
        vocab=vocab, lowercase=cfg.lowercase, train_end=split.train_end, val_end=split.val_end, length=split.length,
        unknown_in_val=int(np.count_nonzero(tokens[split.train_end : split.val_end] == 0)),
        unknown_in_test=int(np.count_nonzero(tokens[split.val_end :] == 0)),
    )  # fmt: skip
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "tokens.npy", tokens)
        write_json(tmp / "meta.json", asdict(prepared))
    return prepared
