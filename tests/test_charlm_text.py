"""charlm text data (ingest, validate, prepare) and its baselines (unigram, Kneser-Ney n-gram, word share)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lstmops.tasks.charlm.settings import CharLMConfig
from lstmops.tasks.charlm.text import (
    MIN_SPAN_CHARS,
    TextPrepared,
    ingest_text,
    load_tokens,
    prepare_text,
    read_snapshot,
    validate_text,
)
from lstmops.errors import DataError, ValidationFailed
from lstmops.io import md5_file
from lstmops.tasks.charlm.ngram import NGram, unigram_bits, vocabulary_words, word_share

SHAKESPEARE = Path(__file__).resolve().parents[1] / "data" / "source" / "shakespeare_plays.txt"
PROSE = "the quick brown fox jumps over the lazy dog, and the dog sleeps on.\n"


def config(source: str | Path, **changes) -> CharLMConfig:
    return CharLMConfig(source=str(source), **{"min_chars": 100, **changes})


@pytest.fixture(scope="module")
def shakespeare() -> str:
    with SHAKESPEARE.open(encoding="utf-8") as fh:
        return fh.read(330_000).lower()


@pytest.fixture(scope="module")
def ids(shakespeare: str) -> tuple[np.ndarray, int]:
    chars = sorted(set(shakespeare))
    lookup = {ch: i + 1 for i, ch in enumerate(chars)}  # 0: the unknown symbol
    return np.array([lookup[ch] for ch in shakespeare], dtype=np.int64), len(chars) + 1


# --- ingest -------------------------------------------------------------------------------------


def test_ingest_of_one_file_normalizes_windows_newlines_and_drops_a_byte_order_mark(tmp_path):
    (tmp_path / "book.txt").write_bytes(b"\xef\xbb\xbfline one\r\nline two\r\n")
    snap = ingest_text(config("book.txt"), tmp_path, tmp_path / "raw" / "text.parquet")
    assert (snap.files, snap.chars) == (1, len("line one\nline two\n"))
    assert read_snapshot(tmp_path / "raw" / "text.parquet") == (["book.txt"], ["line one\nline two\n"])


def test_ingest_of_a_directory_takes_its_txt_files_sorted_by_name(tmp_path):
    (tmp_path / "corpus").mkdir()
    for name, text in {"b.txt": "second", "a.txt": "first", "notes.md": "skipped", "C.TXT": "upper"}.items():
        (tmp_path / "corpus" / name).write_text(text)
    ingest_text(config("corpus"), tmp_path, tmp_path / "snap.parquet")
    assert read_snapshot(tmp_path / "snap.parquet") == (["C.TXT", "a.txt", "b.txt"], ["upper", "first", "second"])


def test_ingest_of_a_glob_names_files_relative_to_its_directory(tmp_path):
    for part in ("x", "y"):
        (tmp_path / "corpus" / part).mkdir(parents=True)
        (tmp_path / "corpus" / part / "book.txt").write_text(part)
    ingest_text(config("corpus/*/book.txt"), tmp_path, tmp_path / "snap.parquet")
    assert read_snapshot(tmp_path / "snap.parquet") == (["x/book.txt", "y/book.txt"], ["x", "y"])


def test_a_byte_that_does_not_decode_fails_in_one_line_naming_the_file_and_byte_and_writes_nothing(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"caf\xc3\xa9 ok\n" + b"x" * 20 + b"\xff rest")
    with pytest.raises(DataError) as err:
        ingest_text(config("bad.txt"), tmp_path, tmp_path / "snap.parquet")
    assert str(err.value) == f"{tmp_path / 'bad.txt'}: not valid utf-8 at byte 29 (set charlm.encoding)"
    assert not (tmp_path / "snap.parquet").exists()
    ingest_text(config("bad.txt", encoding="latin-1"), tmp_path, tmp_path / "snap.parquet")  # the hint works


@pytest.mark.parametrize(
    "source, message",
    [("missing.txt", "missing.txt: source file not found"), ("empty", "empty: directory has no .txt files"),
     ("nothing/*.txt", "nothing/*.txt: no files match")],
)  # fmt: skip
def test_a_missing_or_empty_source_fails_in_one_line(tmp_path, source, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        ingest_text(config(source), tmp_path, tmp_path / "snap.parquet")
    assert str(err.value) == message


def test_two_ingests_of_the_same_text_write_identical_snapshot_bytes(tmp_path):
    (tmp_path / "a.txt").write_text(PROSE * 50)
    ingest_text(config("a.txt"), tmp_path, tmp_path / "one.parquet")
    ingest_text(config("a.txt"), tmp_path, tmp_path / "two.parquet")
    assert md5_file(tmp_path / "one.parquet") == md5_file(tmp_path / "two.parquet")
    assert pq.read_metadata(tmp_path / "one.parquet").schema.to_arrow_schema().metadata in (None, {})


# --- validate -----------------------------------------------------------------------------------


def snapshot_of(tmp_path: Path, text: str, name: str = "book.txt") -> Path:
    (tmp_path / name).write_text(text)
    ingest_text(config(name), tmp_path, tmp_path / "snap.parquet")
    return tmp_path / "snap.parquet"


def test_validation_passes_a_good_text_and_records_its_counts(tmp_path):
    snap = snapshot_of(tmp_path, "AAB\nab\n")
    checks = validate_text(config("book.txt", min_chars=5), snap, tmp_path / "v.json", "text")
    assert [c["check"] for c in checks] == ["not_empty", "min_chars", "max_vocab", "control_chars"]
    counts = json.loads((tmp_path / "v.json").read_text())["counts"]
    assert counts == {"files": 1, "chars": 7, "lines": 2, "vocabulary": 3, "top_chars": [["a", 3], ["\n", 2], ["b", 2]]}
    assert (tmp_path / "v.html").exists()


@pytest.mark.parametrize(
    "text, changes, expected",
    [
        ("short\n", {"min_chars": 100}, "text: 6 characters, fewer than charlm.min_chars=100"),
        ("   \n\n", {}, "text: the text is empty or whitespace only (1 file(s))"),
        ("abcdefgh" * 20, {"max_vocab": 5, "lowercase": False},
         "text: 8 distinct characters, more than charlm.max_vocab=5 (rarest: 'a' x20, 'b' x20, 'c' x20, 'd' x20, 'e' x20)"),
        ("clean line\nab\x00c\x1b" + "x" * 100, {},
         "text: 2 control character(s) other than newline and tab, the first '\\x00' at book.txt:2:3 (file:line:column)"),
    ],
    ids=["too short", "empty", "too many distinct characters", "control characters"],
)  # fmt: skip
def test_validation_refuses_in_one_line_and_still_writes_both_reports(tmp_path, text, changes, expected):
    snap = snapshot_of(tmp_path, text)
    with pytest.raises(ValidationFailed) as err:
        validate_text(config("book.txt", **changes), snap, tmp_path / "v.json", "text")
    assert err.value.lines == [expected]
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["success"] is False and report["failed"] == [expected.removeprefix("text: ")]
    assert "FAILED" in (tmp_path / "v.html").read_text()


def test_validation_counts_characters_after_lowercasing(tmp_path):
    snap = snapshot_of(tmp_path, "AaBb" * 30)
    validate_text(config("book.txt", max_vocab=2), snap, tmp_path / "v.json", "text")
    with pytest.raises(ValidationFailed):
        validate_text(config("book.txt", max_vocab=2, lowercase=False), snap, tmp_path / "v.json", "text")


# --- prepare ------------------------------------------------------------------------------------


def test_split_spans_are_contiguous_ordered_and_cover_the_joined_files(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "1.txt").write_text("First File " * 100)
    (tmp_path / "corpus" / "2.txt").write_text("second file " * 100)
    ingest_text(config("corpus"), tmp_path, tmp_path / "snap.parquet")
    prep = prepare_text(
        config("corpus", val_fraction=0.1, test_fraction=0.2), tmp_path / "snap.parquet", tmp_path / "p"
    )
    text = ("First File " * 100 + "\n" + "second file " * 100).lower()
    assert 0 < prep.train_end < prep.val_end < prep.length == len(text)
    assert (prep.val_end - prep.train_end, prep.length - prep.val_end) == (
        round(0.1 * len(text)),
        round(0.2 * len(text)),
    )
    tokens = load_tokens(tmp_path / "p")
    assert tokens.dtype == np.uint8 and len(tokens) == len(text)
    assert prep.decode(tokens) == text
    assert TextPrepared.load(tmp_path / "p") == prep


def test_the_vocabulary_comes_from_the_training_span_and_unseen_characters_map_to_zero(tmp_path):
    text = "abc " * 200 + "abz " * 25 + "abzq" * 25  # train: 'abc ', val: adds z, test: adds z and q
    snap = snapshot_of(tmp_path, text)
    prep = prepare_text(config("book.txt", val_fraction=0.1, test_fraction=0.1), snap, tmp_path / "p")
    assert prep.vocab == ["\ufffd", " ", "a", "b", "c"]
    tokens = load_tokens(tmp_path / "p")
    assert (prep.unknown_in_val, prep.unknown_in_test) == (25, 50)
    assert np.count_nonzero(tokens[: prep.train_end] == 0) == 0
    assert prep.decode(tokens[prep.val_end : prep.val_end + 4]) == "ab\ufffd\ufffd"
    assert prep.encode("ABQ").tolist() == [2, 3, 0]  # lowercased as the training text was


def test_prepare_refuses_a_test_span_too_short_to_score(tmp_path):
    snap = snapshot_of(tmp_path, "x" * 1000)
    with pytest.raises(DataError, match=f"the test span has 50 of 1,000 characters, fewer than {MIN_SPAN_CHARS}"):
        prepare_text(config("book.txt", val_fraction=0.2, test_fraction=0.05), snap, tmp_path / "p")
    assert not (tmp_path / "p").exists()


# --- baselines ----------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 2, 4])
def test_ngram_probabilities_sum_to_one_over_the_vocabulary_for_any_context(ids, order):
    tokens, vocab = ids
    model = NGram.fit(tokens[:50_000], vocab, order)
    rng = np.random.default_rng(order)
    contexts = [[], [0], [0, 0, 0], list(tokens[:7]), *(list(rng.integers(0, vocab, size=n)) for n in range(1, 6))]
    for context in contexts:
        probs = model.distribution(context)
        assert probs.min() > 0 and probs.sum() == pytest.approx(1.0, abs=1e-12)


def test_ngram_scores_agree_with_its_distribution(ids):
    tokens, vocab = ids
    model = NGram.fit(tokens[:50_000], vocab, 3)
    test = tokens[60_000:60_050]
    by_hand = [-np.log2(model.distribution(list(test[max(0, i - 2) : i]))[test[i]]) for i in range(len(test))]
    assert model.bits(test) == pytest.approx(np.mean(by_hand), rel=1e-12)
    assert model.bits(test, warmup=2) == pytest.approx(np.mean(by_hand[2:]), rel=1e-12)


def test_ngram_beats_the_unigram_on_held_out_shakespeare(ids):
    tokens, vocab = ids
    train, test = tokens[:300_000], tokens[300_000:]
    unigram = unigram_bits(train, test, vocab)
    ngram = NGram.fit(train, vocab, 5).bits(test)
    assert 4.0 < unigram < 4.8 and ngram < unigram - 1.0


def test_unigram_bits_are_add_one_smoothed(ids):
    # train counts: id 1 three times, id 2 once; vocab 4 -> p = (4, 2, 1, 1) / 8
    assert unigram_bits(np.array([1, 1, 1, 2]), np.array([1, 3]), 4) == pytest.approx((1 + 3) / 2)


def test_sampling_never_yields_the_unknown_symbol_and_repeats_for_a_seeded_rng(ids):
    tokens, vocab = ids
    model = NGram.fit(tokens[:20_000], vocab, 3)
    prompt = [0, 0]  # an unseen context: the distribution is the smoothed unigram, where 0 has mass
    hot = model.sample(prompt, 400, 3.0, np.random.default_rng(7))
    assert 0 not in hot and len(hot) == 400
    assert hot == model.sample(prompt, 400, 3.0, np.random.default_rng(7))
    assert hot != model.sample(prompt, 400, 3.0, np.random.default_rng(8))
    assert 0 not in model.sample(prompt, 50, 0.0, np.random.default_rng(7))


def test_word_share_is_one_for_training_words_and_near_zero_for_gibberish(shakespeare):
    words = vocabulary_words(shakespeare)
    assert word_share("to be, or not to be: that is the question.\n", words) == 1.0
    assert word_share("zqx vvkj plorth 'grmbl' xxqz", words) == 0.0
    assert word_share("to be or not to be that is the questi", shakespeare) == 1.0  # the cut last word is left out
    assert word_share("o'er 'tis", words) == 1.0
    assert word_share(" ,.;\n", words) == 0.0


# --- S3 ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_ingest_reads_the_txt_objects_under_an_s3_prefix(tmp_path, s3_server, monkeypatch):
    import boto3

    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3")
    for key, body in {"books/b.txt": b"two\r\n", "books/a.txt": b"one", "books/skip.csv": b"x,y"}.items():
        s3.put_object(Bucket="lstmops", Key=key, Body=body)
    snap = ingest_text(config("s3://lstmops/books/"), tmp_path, tmp_path / "snap.parquet")
    assert snap.files == 2 and read_snapshot(tmp_path / "snap.parquet") == (["a.txt", "b.txt"], ["one", "two\n"])
    with pytest.raises(DataError, match="^s3://lstmops/books/none.txt: object not found$"):
        ingest_text(config("s3://lstmops/books/none.txt"), tmp_path, tmp_path / "snap.parquet")
