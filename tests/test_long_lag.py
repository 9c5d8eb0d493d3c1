"""The long_lag task's parts: the generators follow the 1997 paper's definitions and repeat for a
seed, the success criteria pass and fail where the paper says, the settings, the exported file,
and the training engine's criterion hook (stops when solved, resumes, changes nothing without it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lstmops import config
from lstmops.errors import ConfigError
from lstmops.tasks.long_lag.model import LongLagArtifact, LongLagNet, LongLagSpec, script, task_outputs
from lstmops.tasks.long_lag.problems import (
    ORDER_CLASSES, REBER_SYMBOLS, Encoded, embedded_reber_string, possible_next, problem, reber_string, unique_strings,
)  # fmt: skip
from lstmops.tasks.long_lag.task import generate, scores
from lstmops.train import fit

REPO = Path(__file__).resolve().parents[1]
LONG_LAG = REPO / "pipelines" / "long_lag"


def samples(source: str, n: int, seed: int = 0, **settings) -> list[dict]:
    p, rng = problem(source, settings), np.random.default_rng(seed)
    return [p.sample(rng) for _ in range(n)]


def same(a: list[dict], b: list[dict]) -> bool:
    return all(
        set(x) == set(y) and all(np.array_equal(np.asarray(x[k]), np.asarray(y[k])) for k in x) for x, y in zip(a, b, strict=True)
    )


# --- generators -----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["adding", "embedded_reber", "temporal_order"])
def test_generators_repeat_for_a_seed_and_differ_across_seeds(source):
    assert same(samples(source, 50, seed=3), samples(source, 50, seed=3))
    assert not same(samples(source, 50, seed=3), samples(source, 50, seed=4))
    p = problem(source)
    assert same(p.from_seeds([11, 12]), p.from_seeds([11, 12]))  # a training row is just its seed


@pytest.mark.parametrize("T", [100, 500, 1000])
def test_adding_sequences_follow_experiment_4(T):
    p = problem("adding", {"T": T})
    records = samples("adding", 300 if T == 100 else 40, seed=T, T=T)
    lengths = {len(r["values"]) for r in records}
    assert min(lengths) >= T and max(lengths) <= T + T // 10 and len(lengths) > 1
    for r in records:
        values, markers = np.asarray(r["values"]), np.asarray(r["markers"])
        marked = np.flatnonzero(markers == 1)
        assert len(marked) == 2 and marked[0] < 10 and marked[1] < T // 2 - 1  # one of the first 10, one of the first T/2-1
        assert all(markers[i] == -1 for i in (0, len(markers) - 1) if i not in marked)
        assert np.count_nonzero(markers) == 2 + sum(i not in marked for i in (0, len(markers) - 1))
        assert np.all((values >= -1) & (values <= 1))
        assert r["target"] == pytest.approx(0.5 + (values[marked[0]] + values[marked[1]]) / 4, abs=1e-6)
        assert 0 <= r["target"] <= 1
        assert p.problems(r) == []
    first_marked = [r for r in records if r["markers"][0] == 1]
    assert first_marked and all(r["values"][0] == 0 for r in first_marked)  # "we set X1 to zero"


def test_adding_definition_check_catches_a_wrong_sequence():
    p = problem("adding", {"T": 100})
    good = samples("adding", 1, seed=1)[0]
    extra = {**good, "markers": np.where(np.arange(len(good["markers"])) == 60, 1, good["markers"])}
    assert any("marked pairs" in m for m in p.problems(extra))
    assert any("target" in m for m in p.problems({**good, "target": good["target"] + 0.1}))
    assert any("length" in m for m in p.problems({**good, "values": good["values"][:50], "markers": good["markers"][:50]}))


def test_reber_strings_are_in_the_grammar_and_the_embedding_repeats_its_branch():
    rng = np.random.default_rng(0)
    for _ in range(500):
        s = embedded_reber_string(rng)
        assert s[0] == "B" and s[-1] == "E" and s[1] == s[-2] and s[1] in "TP"
        inner = s[2:-2]
        assert inner[0] == "B" and inner[-1] == "E" and set(inner) <= set(REBER_SYMBOLS)
        assert possible_next(s) is not None and len(possible_next(s)) == len(s) - 1
    assert {reber_string(rng)[:2] for _ in range(50)} == {"BT", "BP"}  # both ways out of the first state
    # The shortest strings of the grammar, and what may follow each prefix.
    assert possible_next("BTBTXSETE") == [{"T", "P"}, {"B"}, {"T", "P"}, {"S", "X"}, {"X", "S"}, {"E"}, {"T"}, {"E"}]
    assert possible_next("BPBPVVEPE")[-2:] == [{"P"}, {"E"}]  # the long lag: the branch seen at step 2
    for bad in ("BTBTXSEPE", "BTBTXXEPE", "BTBTSXXSETE", "TBTXSETE", "BTBTXSET"):
        assert possible_next(bad) is None, bad
    assert problem("embedded_reber").problems({"string": "BTBTXSEPE"})


def test_reber_held_out_strings_are_never_training_strings():
    p = problem("embedded_reber")
    rng = np.random.default_rng(0)
    train = [p.sample(rng) for _ in range(256)]
    seen = {r["string"] for r in train}
    held_out = unique_strings(p, rng, 256, seen)
    assert len(held_out) == 256 and not seen & {r["string"] for r in held_out}


def test_temporal_order_sequences_follow_experiment_6a():
    p = problem("temporal_order")
    records = samples("temporal_order", 400, seed=6)
    labels = set()
    for r in records:
        s = r["string"]
        assert 100 <= len(s) <= 110 and s[0] == "E" and s[-1] == "B"
        relevant = [i + 1 for i, ch in enumerate(s) if ch in "XY"]  # positions counted from 1
        assert len(relevant) == 2 and 10 <= relevant[0] <= 20 and 50 <= relevant[1] <= 60
        assert set(s[1:-1]) - set("XY") <= set("abcd")
        assert r["label"] == ORDER_CLASSES[s[relevant[0] - 1] + s[relevant[1] - 1]]
        assert p.problems(r) == []
        labels.add(r["label"])
    assert labels == {"Q", "R", "S", "U"}
    wrong = {**records[0], "label": next(c for c in "QRSU" if c != records[0]["label"])}
    assert any("class" in m for m in p.problems(wrong))


def test_generated_splits_repeat_for_a_data_seed():
    cfg = config.load(LONG_LAG, ["long_lag.source=embedded_reber"])
    a, b = generate(cfg.long_lag), generate(cfg.long_lag)
    assert {k: len(v) for k, v in a.items()} == {"train": 256, "val": 256, "test": 256}
    assert all(same(a[k], b[k]) for k in a)
    other = generate(cfg.long_lag.model_copy(update={"data_seed": 1}))
    assert not same(a["test"], other["test"])


# --- the criteria ---------------------------------------------------------------------------------


def encoded(source: str, records: list[dict], **settings) -> tuple:
    p = problem(source, settings)
    return p, p.encode(records)


def test_adding_criterion_is_an_absolute_error_below_0_04():
    p, enc = encoded("adding", samples("adding", 4, seed=2))
    outputs = enc.target.copy()
    ends = enc.lengths - 1
    outputs[np.arange(4), ends, 0] += [0.039, -0.039, 0.041, -0.041]
    assert p.correct(outputs, enc).tolist() == [True, True, False, False]


def test_temporal_order_criterion_is_every_output_within_0_3():
    p, enc = encoded("temporal_order", samples("temporal_order", 3, seed=2))
    outputs = np.zeros_like(enc.target)
    ends, classes = enc.lengths - 1, enc.target[np.arange(3), enc.lengths - 1].argmax(axis=1)
    for i, right in enumerate([0.71, 0.69, 0.75]):
        outputs[i, ends[i]] = (1 - right) / 3
        outputs[i, ends[i], classes[i]] = right
    outputs[2, ends[2]] = 0.0
    outputs[2, ends[2], classes[2]] = 0.75
    outputs[2, ends[2], (classes[2] + 1) % 4] = 0.25  # errors 0.25 and 0.25: still below 0.3
    assert p.correct(outputs, enc).tolist() == [True, False, True]


def test_reber_criterion_is_the_possible_next_symbols_above_all_others():
    p, enc = encoded("embedded_reber", [{"string": "BTBTXSETE"}, {"string": "BPBPVVEPE"}])
    ideal = enc.ideal.copy()
    assert p.correct(ideal, enc).all()  # uniform over the possible symbols, 0 elsewhere
    possible = enc.ideal > 0
    lopsided = np.where(possible, 0.2, 0.01)
    first = possible & (possible.cumsum(axis=-1) == 1)
    lopsided[first] = 0.9  # one possible symbol far above the other: both still above every impossible one
    assert p.correct(lopsided, enc).all()
    impossible = lopsided.copy()
    impossible[0, 3, REBER_SYMBOLS.index("E")] = 0.5  # after BTBT an E is impossible, yet above the possible S
    assert p.correct(impossible, enc).tolist() == [False, True]
    wrong = ideal.copy()
    wrong[1, 6] = 0.0
    wrong[1, 6, REBER_SYMBOLS.index("T")] = 1.0  # after BPBPVVE it must be P: T predicted instead
    assert p.correct(wrong, enc).tolist() == [True, False]


@pytest.mark.parametrize("source", ["adding", "embedded_reber", "temporal_order"])
def test_the_ideal_outputs_meet_the_criterion_and_the_prior_does_not(source):
    p, enc = encoded(source, samples(source, 64, seed=5))
    ideal = scores(p, [enc.ideal], [enc])
    assert ideal["correct_fraction"] == 1.0 and ideal["mae"] == 0.0
    prior = enc.ideal[enc.scored].mean(axis=0)
    constant = scores(p, [np.broadcast_to(prior, enc.ideal.shape).copy()], [enc])
    assert constant["correct_fraction"] < 0.5 and constant["mae"] > 0.05


# --- settings ---------------------------------------------------------------------------------------


def test_the_budget_sets_the_engine_epochs_and_overrides_are_checked():
    cfg = config.load(LONG_LAG, ["long_lag.adding.T=500", "long_lag.adding.max_sequences=10000"])
    assert cfg.long_lag.problem.T == 500 and cfg.model_name == "lstmops-long-lag"
    assert cfg.task_train.epochs == 20 and cfg.task_train.patience == 20  # 10,000 / 512 per check, rounded up
    assert cfg.task_train.learning_rate == 0.01
    for bad, key in [("long_lag.train.epochs=3", "max_sequences"), ("long_lag.source=parity", "long_lag.source"),
                     ("long_lag.adding.T=10", "long_lag.adding.T"), ("long_lag.temporal_order.t2=[5, 200]", "temporal_order")]:  # fmt: skip
        with pytest.raises(ConfigError, match=key):
            config.load(LONG_LAG, [bad])


# --- the exported file ------------------------------------------------------------------------------


def test_the_artifact_gives_outputs_after_every_step_and_at_each_end_and_refuses_bad_input():
    p, enc = encoded("temporal_order", samples("temporal_order", 5, seed=1))
    torch.manual_seed(0)
    core = LongLagNet(LongLagSpec(len(p.inputs), 8, 1, len(p.outputs), lag=110)).eval()
    scripted = script(LongLagArtifact(core, "temporal_order", p.label, p.inputs, p.outputs, p.kind, "criterion"))
    x = torch.from_numpy(enc.x)
    every = scripted(x)
    torch.testing.assert_close(every, task_outputs(core(x), "classification"))
    torch.testing.assert_close(every.sum(-1), torch.ones(every.shape[:2]))
    ends = scripted.final(x, torch.from_numpy(enc.lengths))
    alone = torch.stack([scripted(x[i : i + 1, : enc.lengths[i]])[0, -1] for i in range(5)])
    torch.testing.assert_close(ends, alone, rtol=0, atol=1e-6)  # padding after a sequence's end changes nothing
    assert scripted.task == "long_lag" and scripted.inputs == p.inputs and scripted.problem == "temporal order (6a)"
    for bad, message in [(x[..., :3], "expected 8 inputs"), (x[0], "3-d"), (x * float("nan"), "NaN")]:
        with pytest.raises(Exception, match=message):
            scripted(bad)
    with pytest.raises(Exception, match="lengths"):
        scripted.final(x, torch.tensor([0, 1, 1, 1, 1]))


# --- the training engine's criterion hook -------------------------------------------------------------


@dataclass(frozen=True)
class ToySpec:
    inputs: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


class Toy:
    """A linear regression the engine trains: rows are (x1, x2, y) with y = 2 x1 - x2."""

    unit, terms_per_unit, batch_setting = "sequences", 1, "toy.batch"
    spec = ToySpec()

    def __init__(self, fail_after_batches: int | None = None) -> None:
        self.model = nn.Linear(2, 1)
        self.val = self.rows(torch.Generator().manual_seed(99), 64)
        self.fail_after, self.batches = fail_after_batches, 0

    @staticmethod
    def rows(generator: torch.Generator, n: int) -> torch.Tensor:
        x = torch.randn(n, 2, generator=generator)
        return torch.cat([x, (2 * x[:, :1] - x[:, 1:])], dim=1)

    def view(self) -> nn.Module:
        return self.model

    def rows_per_batch(self) -> int:
        return 4

    def epoch_batches(self, generator: torch.Generator) -> list[torch.Tensor]:
        return list(self.rows(generator, 12).split(4))

    def units(self, batch: torch.Tensor) -> int:
        return len(batch)

    def errors(self, net: nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        self.batches += 1
        if self.fail_after is not None and self.batches > self.fail_after:
            raise KeyboardInterrupt  # the process is killed in the middle of an epoch
        return ((net(rows[:, :2])[:, 0] - rows[:, 2]) ** 2).sum(), len(rows)

    def start_epoch(self) -> None:
        pass

    def validation_loss(self, model: nn.Module) -> float:
        with torch.no_grad():
            return float(((model(self.val[:, :2])[:, 0] - self.val[:, 2]) ** 2).mean())

    def fingerprint(self) -> list:
        return []

    def summary(self) -> dict:
        return {}


class Solvable(Toy):
    threshold = 0.0

    def criterion_met(self, model: nn.Module) -> tuple[bool, dict[str, float]]:
        loss = self.validation_loss(model)
        return loss < self.threshold, {"check_loss": loss}


def toy_config():
    return config.load(REPO, ["train.epochs=8", "train.patience=8", "train.learning_rate=0.05", "train.warmup_steps=0",
                              "train.ema_decay=null", "train.device=cpu", "train.checkpoint_every=1"])  # fmt: skip


def test_fit_stops_when_the_criterion_is_met_resumes_and_is_unchanged_without_it(tmp_path, monkeypatch):
    cfg = toy_config()
    plain_history, plain = fit(cfg, lambda device: Toy(), tmp_path / "plain.pt")
    losses = [row["val_loss"] for row in plain_history.rows]
    assert len(losses) == 8 and "sequences_to_solve" not in plain and "seconds_to_solve" not in plain
    assert all(b < a for a, b in zip(losses, losses[1:]))  # steadily learning: a threshold picks an epoch
    monkeypatch.setattr(Solvable, "threshold", (losses[4] + losses[5]) / 2)  # first met after epoch 6

    history, solved = fit(cfg, lambda device: Solvable(), tmp_path / "solved.pt")
    assert solved["epochs_run"] == 6 and solved["best_epoch"] == 6
    assert solved["sequences_to_solve"] == 6 * 12 and solved["seconds_to_solve"] >= 0
    assert [r["val_loss"] for r in history.rows] == losses[:6]  # the same training until it stops
    assert history.rows[-1]["check_loss"] == losses[5]
    assert torch.load(tmp_path / "solved.pt", weights_only=True)["epoch"] == 6

    never = Solvable.threshold
    monkeypatch.setattr(Solvable, "threshold", -1.0)
    _, unsolved = fit(cfg, lambda device: Solvable(), tmp_path / "unsolved.pt")
    assert unsolved["epochs_run"] == 8 and unsolved["sequences_to_solve"] is None and unsolved["seconds_to_solve"] is None
    monkeypatch.setattr(Solvable, "threshold", never)

    # Killed in epoch 4 (states saved after epochs 1-3), then resumed: the same count, the same weights.
    state = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, lambda device: Solvable(fail_after_batches=10), tmp_path / "resumed.pt", state_path=state)
    assert state.is_file()
    _, resumed = fit(cfg, lambda device: Solvable(), tmp_path / "resumed.pt", state_path=state)
    assert resumed["sequences_to_solve"] == solved["sequences_to_solve"] and not state.exists()
    a, b = (torch.load(tmp_path / name, weights_only=True)["state_dict"] for name in ("solved.pt", "resumed.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def threads():
    """The trainer sets torch's thread count (long_lag.threads); give the test process its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_stages_check_the_generated_data_and_training_repeats_bit_for_bit(tmp_path, threads):
    from lstmops import paths
    from lstmops.errors import DataError, ValidationFailed
    from lstmops.tasks.long_lag import task

    small = ["long_lag.source=adding", "long_lag.adding.T=30", "long_lag.adding.val_sequences=300",
             "long_lag.adding.test_sequences=50", "long_lag.adding.max_sequences=1024", "train.device=cpu"]  # fmt: skip
    cfg = config.load(LONG_LAG, small)
    for stage in (task.ingest, task.validate, task.prepare):
        stage(cfg, tmp_path)
    runs = []
    for name in ("a.pt", "b.pt"):
        history, summary = fit(cfg, lambda device: task.trainer(cfg, tmp_path, device), tmp_path / name)
        runs.append(([r["val_loss"] for r in history.rows], torch.load(tmp_path / name, weights_only=True)["state_dict"]))
    assert summary["epochs_run"] == 2 and summary["sequences_to_solve"] is None  # 1,024 sequences: 2 checks of 512
    assert runs[0][0] == runs[1][0] and all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])

    records, meta = task.read_sequences(tmp_path / paths.SNAPSHOT)
    records["test"][3] = {**records["test"][3], "target": 0.99}
    task.write_sequences(records, task.problem_of(cfg.long_lag), meta, tmp_path / paths.SNAPSHOT)
    with pytest.raises(ValidationFailed, match="test sequence 4: target 0.990000 is not 0.5"):
        task.validate(cfg, tmp_path)
    other = config.load(LONG_LAG, [*small, "long_lag.adding.T=40"])
    with pytest.raises(DataError, match="not from the params"):
        task.prepare(other, tmp_path)


def test_encoded_batches_pad_to_the_longest_and_score_only_real_steps():
    p, enc = encoded("adding", samples("adding", 6, seed=9))
    assert isinstance(enc, Encoded) and enc.x.shape == (6, int(enc.lengths.max()), 2)
    assert enc.scored.sum() == 6 and all(enc.scored[i, n - 1] for i, n in enumerate(enc.lengths))
    assert all(not enc.x[i, n:].any() for i, n in enumerate(enc.lengths))
