"""The character-level language model task (``task: charlm``): text in, the next character out.

Data: ``.txt`` sources become a snapshot (``text.py``), split into contiguous train,
validation and test spans, with the vocabulary of the training span. Training: stateful
truncated BPTT, ``charlm.streams`` contiguous streams read side by side in chunks of
``charlm.chunk_length``; the LSTM state carries from one chunk to the next and is detached
between them, so every character of the training span is a target once per epoch. Metrics:
test bits per character beside a unigram and a smoothed n-gram fitted on the training span,
and samples at several temperatures. Artifact: a TorchScript file with the vocabulary inside
and ``generate`` / ``bits`` entry points (``tasks/charlm/artifact.py``).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lstmops import paths
from lstmops.tasks.charlm.settings import Settings
from lstmops.io import read_json, write_json
from lstmops.tasks.base import Evaluated, Exported, GateInputs

EVAL_CHUNK = 2000  # characters per no-grad step when scoring a span
VAL_STREAMS = 16  # validation is read as this many streams (fast; the state resets once per stream)
WORD_SHARE_SEEDS = (0, 1, 2)  # samples per model behind the word-share figure
SHARE_TEMPERATURE = 0.5


# --- data stages --------------------------------------------------------------------------------


def ingest(cfg: Settings, root: Path) -> str:
    from lstmops.tasks.charlm.text import ingest_text

    snapshot = ingest_text(cfg.charlm, root, root / paths.SNAPSHOT)
    return f"ingested {snapshot.files} text file(s), {snapshot.chars:,} characters from {cfg.charlm.source} -> {paths.SNAPSHOT}"


def validate(cfg: Settings, root: Path, data: str | None = None) -> str:
    """Validate the snapshot, or with ``data`` any text source, standalone."""
    from lstmops.tasks.charlm.text import ingest_text, validate_text

    if data is None:
        checks = validate_text(cfg.charlm, root / paths.SNAPSHOT, root / paths.VALIDATION, cfg.charlm.source)
        # The accepted profile (a DVC output of validate) records what passed; forecast drift skips it.
        counts = read_json(root / paths.VALIDATION)["counts"]
        write_json(root / paths.ACCEPTED_PROFILE, {"task": "charlm", **counts})
        return f"validation passed: {len(checks)} checks -> {paths.VALIDATION} (and .html)"
    report = paths.VALIDATION.with_name(f"validation-{Path(data).stem or 'data'}.json")
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / "snapshot.parquet"
        ingest_text(cfg.charlm.model_copy(update={"source": data}), root, snapshot)
        checks = validate_text(cfg.charlm, snapshot, root / report, data)
    return f"validation passed: {len(checks)} checks -> {report} (and .html)"


def prepare(cfg: Settings, root: Path) -> str:
    from lstmops.tasks.charlm.text import prepare_text

    p = prepare_text(cfg.charlm, root / paths.SNAPSHOT, root / paths.PREPARED)
    unknown = p.unknown_in_val + p.unknown_in_test
    note = f"; {unknown} validation/test characters unseen in training map to the unknown symbol" if unknown else ""
    return (
        f"prepared {p.length:,} characters: train {p.train_end:,}, validation {p.val_end - p.train_end:,}, "
        f"test {p.length - p.val_end:,}; vocabulary {len(p.vocab)} (from the training span){note} -> {paths.PREPARED}"
    )


# --- training: stateful truncated BPTT -------------------------------------------------------------


def stream_chunks(stream_length: int, chunk: int, phase: int) -> list[tuple[int, int]]:
    """(offset, length) of each chunk of a stream. ``phase`` shifts the chunk boundaries from
    epoch to epoch (the first chunk is ``phase`` long), so no character always sits at a chunk's
    start with the least context."""
    cuts = [0, *range(phase or chunk, stream_length, chunk), stream_length]
    return [(a, b - a) for a, b in zip(cuts, cuts[1:]) if b > a]


class StatefulView(nn.Module):
    """What a training step calls (and DDP wraps): logits and the state after the chunk."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None):
        return self.model(x, state)


class CharLMTrainer:
    """The language model's side of the training engine (``train.Trainer``). A batch's rows are
    streams, ``(first character, length)`` of this chunk of each; DDP gives each process the same
    streams every step, so each process carries its own streams' state."""

    unit, terms_per_unit, batch_setting = "chars", 1, "charlm.streams"

    def __init__(self, cfg: Settings, prepared_dir: Path, device: torch.device) -> None:
        from lstmops.tasks.charlm.text import TextPrepared, load_tokens
        from lstmops.tasks.charlm.model import CharLM, CharLMSpec

        c, self.meta = cfg.charlm, TextPrepared.load(prepared_dir)
        self.tokens = torch.from_numpy(load_tokens(prepared_dir).astype(np.int64)).to(device)
        self.chunk = c.chunk_length
        # Each stream needs a target after its last input: streams share train_end - 1 positions.
        self.streams = max(1, min(c.streams, (self.meta.train_end - 1) // (2 * self.chunk)))
        self.stream_length = (self.meta.train_end - 1) // self.streams
        self.spec = CharLMSpec(len(self.meta.vocab), c.embedding_size, c.hidden_size, c.num_layers, c.dropout)
        self.model = CharLM(self.spec).to(device)
        self.state = None

    def view(self) -> nn.Module:
        return StatefulView(self.model)

    def rows_per_batch(self) -> int:
        return self.streams

    def epoch_batches(self, generator: torch.Generator) -> list[torch.Tensor]:
        phase = int(torch.randint(self.chunk, (1,), generator=generator))
        firsts = torch.arange(self.streams, dtype=torch.int64) * self.stream_length
        return [
            torch.stack([firsts + offset, torch.full_like(firsts, length)], dim=1)
            for offset, length in stream_chunks(self.stream_length, self.chunk, phase)
        ]

    def units(self, batch: torch.Tensor) -> int:
        return int(batch[:, 1].sum())

    def errors(self, net: nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        length = int(rows[0, 1])
        index = rows[:, :1].to(self.tokens.device) + torch.arange(length, device=self.tokens.device)
        logits, state = net(self.tokens[index], self.state)
        self.state = tuple(s.detach() for s in state)  # carried, but no gradient across chunks
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), self.tokens[index + 1].reshape(-1), reduction="sum")
        return loss, index.numel()

    def start_epoch(self) -> None:
        self.state = None  # each epoch reads the streams from their start

    def validation_loss(self, model: nn.Module) -> float:
        return mean_nats(model, self.tokens, self.meta.train_end, self.meta.val_end, VAL_STREAMS)

    def fingerprint(self) -> list:
        return [self.meta.vocab, self.meta.train_end, self.meta.val_end, self.meta.length]

    def summary(self) -> dict:
        return {"streams": self.streams, "chunk_length": self.chunk, "train_chars": self.streams * self.stream_length}


def trainer(cfg: Settings, root: Path, device: torch.device) -> CharLMTrainer:
    return CharLMTrainer(cfg, root / paths.PREPARED, device)


def mean_nats(model: nn.Module, tokens: torch.Tensor, start: int, end: int, streams: int = 1) -> float:
    """Mean cross-entropy (nats) of predicting ``tokens[start+1:end]`` from what precedes each,
    reading the span as ``streams`` contiguous streams with the state carried through each."""
    model.eval()
    length = (end - start - 1) // streams
    firsts = start + torch.arange(streams, device=tokens.device) * length
    total, state = 0.0, None
    with torch.no_grad():
        for offset in range(0, length, EVAL_CHUNK):
            n = min(EVAL_CHUNK, length - offset)
            index = firsts[:, None] + offset + torch.arange(n, device=tokens.device)
            logits, state = model(tokens[index], state)
            total += float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[index + 1].reshape(-1), reduction="sum"))
    return total / (length * streams)


def load_model(path: Path):
    """Rebuild the eager model from a checkpoint written by the engine."""
    from lstmops.tasks.charlm.model import CharLM, CharLMSpec

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = CharLM(CharLMSpec(**ckpt["spec"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


# --- evaluation, export and the gate's scoring ----------------------------------------------------------


def bits(nats: float) -> float:
    return nats / math.log(2)


def default_prompt(test_text: str) -> str:
    """The first whole non-empty line of the test text: a prompt the model has never trained on.
    (The test span starts mid-line, so its first line is skipped when there are others.)"""
    lines = test_text.splitlines()[1:] or test_text.splitlines()
    return next((line for line in lines if line.strip()), test_text[:40])


def bits_by_position(model: nn.Module, tokens: torch.Tensor, start: int, end: int, span: int) -> np.ndarray:
    """Mean bits of the character at each position after a reset of the state, over the test
    span cut into pieces of ``span``: how much the model gains from context, position by position."""
    pieces = (end - start - 1) // span
    index = start + torch.arange(pieces)[:, None] * span + torch.arange(span)
    total = torch.zeros(span, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        for rows in index.split(256):
            logits, _ = model(tokens[rows], None)
            nats = nn.functional.cross_entropy(logits.transpose(1, 2).float(), tokens[rows + 1], reduction="none")
            total += nats.sum(dim=0).double()
    return (total / max(pieces, 1) / math.log(2)).numpy()


def write_position_plot(directory: Path, curve: np.ndarray, references: dict[str, float]) -> Path:
    import matplotlib

    from lstmops.plots import save_png

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(np.arange(1, len(curve) + 1), curve, label="LSTM, state reset at position 0")
    for name, value in references.items():
        ax.axhline(value, linestyle="--", linewidth=1, label=f"{name} (whole test span)")
    ax.set(xlabel="position after the reset", ylabel="bits per character", title="How much context the model uses")
    ax.legend()
    return save_png(fig, directory / "bits_by_position.png")


def evaluate(cfg: Settings, root: Path) -> Evaluated:
    from lstmops.tasks.charlm.text import TextPrepared, load_tokens
    from lstmops.tasks.charlm.artifact import script
    from lstmops.tasks.charlm.ngram import NGram, unigram_bits, vocabulary_words, word_share

    c, meta = cfg.charlm, TextPrepared.load(root / paths.PREPARED)
    ids = load_tokens(root / paths.PREPARED).astype(np.int64)
    model, _ = load_model(root / paths.CHECKPOINT)
    vocab_size, train, test = len(meta.vocab), ids[: meta.train_end], ids[meta.val_end :]

    ngram_name = f"ngram_{c.ngram_order}"
    ngram = NGram.fit(train, vocab_size, c.ngram_order)
    scores = {
        "lstm": {"bpc": round(bits(mean_nats(model, torch.from_numpy(ids), meta.val_end, meta.length)), 6)},
        "unigram": {"bpc": round(unigram_bits(train, test, vocab_size), 6)},
        ngram_name: {"bpc": round(ngram.bits(test), 6)},
    }
    prompt = c.sample_prompt or default_prompt(meta.decode(test[:2000]))
    sampler = script(model, meta.vocab, meta.lowercase)
    samples = {f"{t:g}": sampler.generate(prompt, c.sample_chars, t, cfg.seed) for t in c.temperatures}
    # Word share: how many sampled words are real (occur in the training text), LSTM vs n-gram.
    words = vocabulary_words(meta.decode(train))
    prompt_ids = [int(i) for i in meta.encode(prompt)]
    lstm_text = "\n".join(sampler.generate(prompt, c.sample_chars, SHARE_TEMPERATURE, s) for s in WORD_SHARE_SEEDS)
    ngram_text = "\n".join(
        meta.decode(ngram.sample(prompt_ids, c.sample_chars, SHARE_TEMPERATURE, np.random.default_rng(s))) for s in WORD_SHARE_SEEDS
    )
    shares = {"lstm": round(word_share(lstm_text, words), 4), ngram_name: round(word_share(ngram_text, words), 4)}
    best = min((k for k in scores if k != "lstm"), key=lambda k: scores[k]["bpc"])
    metrics = {
        "test": scores, "test_chars": len(test), "vocab_size": vocab_size,
        f"skill_vs_{best}": round(1 - scores["lstm"]["bpc"] / scores[best]["bpc"], 6),
        f"word_share_t{SHARE_TEMPERATURE:g}": shares, "prompt": prompt, "samples": samples,
    }  # fmt: skip
    write_json(root / paths.METRICS, metrics)
    curve = bits_by_position(model, torch.from_numpy(ids), meta.val_end, meta.length, c.chunk_length)
    (root / paths.PER_STEP).write_text(
        "forecaster,step,bpc\n" + "".join(f"lstm,{i + 1},{v:.6g}\n" for i, v in enumerate(curve))
    )
    plots = write_samples(root / paths.PLOTS, prompt, samples, ngram_text[: c.sample_chars])
    plots.append(write_position_plot(root / paths.PLOTS, curve, {k: v["bpc"] for k, v in scores.items()}))
    files = [root / paths.METRICS, root / paths.PER_STEP, *plots]
    flat = {f"test_{name}_bpc": m["bpc"] for name, m in scores.items()}
    flat.update({f"word_share_{name}": v for name, v in shares.items()})
    return Evaluated("\n".join(metrics_lines(metrics)), files, flat, [])


def write_samples(directory: Path, prompt: str, samples: dict[str, str], ngram_sample: str) -> list[Path]:
    """The samples as a text file a person reads (also logged to MLflow)."""
    from lstmops.io import atomic_path

    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"prompt: {prompt!r}", ""]
    for temperature, text in samples.items():
        lines += [f"--- LSTM, temperature {temperature}", text, ""]
    lines += [f"--- n-gram baseline, temperature {SHARE_TEMPERATURE:g}", ngram_sample, ""]
    path = directory / "samples.txt"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
    return [path]


def metrics_lines(metrics: dict) -> list[str]:
    """Test bits per character beside the baselines, the word share, and one sample."""
    shares = next((v for k, v in metrics.items() if k.startswith("word_share_t")), {})
    lines = [f"test bits per character ({metrics['test_chars']:,} characters)"]
    lines += [f"  {name:<12}{m['bpc']:>8.4f}" for name, m in metrics["test"].items()]
    lines += [f"{k.replace('_', ' ')}: {v:+.1%} (fewer bits)" for k, v in metrics.items() if k.startswith("skill_vs_")]
    lines += [f"sampled words found in the training text (T={SHARE_TEMPERATURE:g}): "
              + ", ".join(f"{k} {v:.1%}" for k, v in shares.items())]  # fmt: skip
    sample = metrics["samples"].get(f"{SHARE_TEMPERATURE:g}")
    if sample is not None:
        lines.append(f"sample (T={SHARE_TEMPERATURE:g}) after {metrics['prompt']!r}: {sample[:160]!r}")
    return lines


def artifact_line(root: Path, exported: dict) -> str:
    return (
        f"TorchScript: {(root / exported['torchscript']).resolve()} (vocabulary of {exported['vocab_size']} inside; "
        f"lstmops generate --prompt TEXT, or torch.jit.load(...).generate(prompt, chars, temperature, seed))"
    )


def _signature(vocab_size: int):
    """Token ids in (batch, steps), log-probabilities of the next character out."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.int64), (-1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, vocab_size))]),
    )


def export(cfg: Settings, root: Path) -> Exported:
    from lstmops.tasks.charlm.text import TextPrepared, load_tokens
    from lstmops.tasks.charlm.artifact import export as run

    meta = TextPrepared.load(root / paths.PREPARED)
    model, _ = load_model(root / paths.CHECKPOINT)
    test = load_tokens(root / paths.PREPARED)[meta.val_end :].astype(np.int64)
    check = run(model, meta.vocab, meta.lowercase, test, root / paths.TORCHSCRIPT)
    metadata = {"vocab_size": len(meta.vocab), "lowercase": meta.lowercase, "entry_points": ["generate", "bits", "forward"]}
    summary = (
        f"exported {paths.TORCHSCRIPT} (max |TorchScript - eager| log-probability = {check['max_abs_diff']:.2e} "
        f"on {check['checked_chars']:,} test characters)"
    )
    return Exported(check, _signature(len(meta.vocab)), metadata, summary)


def file_hash(text: str) -> str:
    """A text file as a seen record names it: the first 16 hex digits of its text's sha256."""
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_spans(texts: list[str], lowercase: bool) -> list[tuple[str, int, int]]:
    """(hash, first, end) of each file in the corpus's characters (files joined by one newline).
    Lowercasing maps a file's characters one to one here: the corpus is lowercased as a whole,
    and a newline between files leaves every file's own case context as it is alone."""
    from lstmops.tasks.charlm.text import corpus

    spans, at = [], 0
    for text in texts:
        length = len(corpus([text], lowercase))
        spans.append((file_hash(text), at, at + length))
        at += length + 1
    return spans


def seen(cfg: Settings, root: Path) -> dict[str, str]:
    """The characters the model trained and validated on (the corpus before the test span), as
    ``hash:first-end`` ranges within each file, the file named by its text's hash: a file that
    moves in the corpus (another file sorts before it) or reappears is still known."""
    from lstmops.tasks.charlm.text import TextPrepared, read_snapshot

    meta = TextPrepared.load(root / paths.PREPARED)
    _, texts = read_snapshot(root / paths.SNAPSHOT)
    ranges = [f"{h}:0-{min(end, meta.val_end) - first}" for h, first, end in file_spans(texts, meta.lowercase)
              if first < meta.val_end]  # fmt: skip
    return {"chars": " ".join(ranges)}


def unseen_chars(texts: list[str], lowercase: bool, val_end: int, length: int, records: list[dict[str, str]]) -> np.ndarray:
    """Mask over the test span ``[val_end, length)`` of the characters that no record's ranges cover."""
    keep = np.ones(length - val_end, dtype=bool)
    spans = file_spans(texts, lowercase)
    for record in records:
        ranges: dict[str, list[tuple[int, int]]] = {}
        for item in record.get("chars", "").split():
            h, _, span = item.partition(":")
            lo, _, hi = span.partition("-")
            ranges.setdefault(h, []).append((int(lo), int(hi)))
        for h, first, _ in spans:
            for lo, hi in ranges.get(h, []):
                keep[max(first + lo - val_end, 0) : max(first + hi - val_end, 0)] = False
    return keep


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in ``mask``."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def gate_inputs(cfg: Settings, root: Path, metrics: dict, seen: list[dict[str, str]]) -> GateInputs:
    """Bits per character on the newest test text that no version in ``seen`` trained or validated
    on, through each file's own ``bits`` (its own vocabulary inside), so versions with different
    vocabularies compare fairly. Each run of unseen text is read from the zero state; the figure is
    the mean over every predicted character of every run, and the baselines score the same ones."""
    from lstmops.tasks.charlm.ngram import NGram, unigram_bits
    from lstmops.tasks.charlm.text import TextPrepared, corpus, load_tokens, read_snapshot

    meta = TextPrepared.load(root / paths.PREPARED)
    _, texts = read_snapshot(root / paths.SNAPSHOT)
    text = corpus(texts, meta.lowercase)
    keep = unseen_chars(texts, meta.lowercase, meta.val_end, meta.length, seen)
    pieces = [(meta.val_end + a, meta.val_end + b) for a, b in runs(keep) if b - a >= 2]  # one char predicts nothing
    predicted = sum(b - a - 1 for a, b in pieces)

    def score(model) -> float:
        return sum(float(model.bits(text[a:b])) * (b - a - 1) for a, b in pieces) / max(predicted, 1)

    def problem(model) -> str | None:
        kind = getattr(model, "task", "forecast")
        return None if kind == "charlm" else f"it is a {kind} model, not a character-level language model"

    baselines = {k: v["bpc"] for k, v in metrics["test"].items() if k != "lstm"}
    if pieces and predicted < meta.length - meta.val_end - 1:  # some text left out: score the baselines on what is left
        ids = load_tokens(root / paths.PREPARED).astype(np.int64)
        train, vocab = ids[: meta.train_end], len(meta.vocab)
        targets = np.concatenate([ids[a + 1 : b] for a, b in pieces])
        ngram = NGram.fit(train, vocab, cfg.charlm.ngram_order)
        ngram_bits = sum(ngram.bits(ids[a:b], warmup=1) * (b - a - 1) for a, b in pieces) / predicted
        baselines = {"unigram": unigram_bits(train, targets, vocab), f"ngram_{cfg.charlm.ngram_order}": ngram_bits}
    held = meta.length - meta.val_end
    left_out = f"; {held - int(keep.sum()):,} left out: a compared version trained or validated on them" if not keep.all() else ""
    scored = f"{predicted:,} predicted characters in {len(pieces)} run(s) of the {held:,}-character test span{left_out}"
    return GateInputs("bpc", baselines, score, problem, "characters", held - 1, predicted, scored)


def lineage_tags(cfg: Settings) -> dict[str, str]:
    return {}  # the artifact carries its own interface (vocabulary, classes, problem)


def sample_text(model: Path | None, version, prompt: str, chars: int, temperature: float, seed: int) -> str:
    """``lstmops generate``: sample from an exported file, or from a registry version (``version()``
    gives the MLflow client and the resolved version)."""
    from lstmops.tasks.charlm.generate import generate as run
    from lstmops.tasks.charlm.generate import load_file, load_version

    sampler = load_file(model) if model is not None else load_version(*version())[0]
    return run(sampler, prompt, chars, temperature, seed)
