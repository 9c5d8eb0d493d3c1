"""The charlm model side: the fast CPU training path computes what nn.LSTM computes, and the
exported TorchScript file generates, scores and refuses what it should, with torch alone."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from lstmops.errors import LstmopsError
from lstmops.tasks.charlm import artifact, recurrence
from lstmops.tasks.charlm.model import CharLM, CharLMSpec, dropout_mask

VOCAB = ["\ufffd", "\n", " ", "a", "b", "c", "d", "e", "é"]
BATCH, STEPS, HIDDEN = 3, 7, 6


def make_model(layers: int = 1, dropout: float = 0.0, seed: int = 0) -> CharLM:
    torch.manual_seed(seed)
    return CharLM(CharLMSpec(len(VOCAB), 4, HIDDEN, layers, dropout))


def random_state(layers: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(layers, BATCH, HIDDEN, generator=g), torch.randn(layers, BATCH, HIDDEN, generator=g)


def tokens(seed: int = 2, steps: int = STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(len(VOCAB), (BATCH, steps + 1), generator=g)
    return x[:, :-1], x[:, 1:]


def loss_and_grads(model: CharLM, x, y, state=None, dropout_seed: int | None = None):
    """Loss (cross-entropy plus a term on the returned state, so its gradient is checked too),
    every parameter's gradient, the state's gradient and the returned state."""
    model.zero_grad()
    if state is not None:
        state = tuple(s.clone().requires_grad_() for s in state)
    if dropout_seed is not None:
        torch.manual_seed(dropout_seed)
    logits, (h, c) = model(x, state)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)) + 0.1 * (h.sum() + 0.5 * c.sum())
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    state_grads = tuple(s.grad for s in state) if state is not None else None
    return loss.detach(), grads, state_grads, (h.detach(), c.detach())


def assert_same(a, b) -> None:
    loss_a, grads_a, state_grads_a, out_a = a
    loss_b, grads_b, state_grads_b, out_b = b
    assert torch.allclose(loss_a, loss_b, rtol=1e-4, atol=1e-6)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6), name
    for u, v in zip(out_a, out_b):
        assert torch.allclose(u, v, rtol=1e-4, atol=1e-6)
    if state_grads_a is not None:
        for u, v in zip(state_grads_a, state_grads_b):
            assert torch.allclose(u, v, rtol=1e-4, atol=1e-6)


# --- the fast CPU training path ------------------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("with_state", [False, True])
def test_fast_path_gives_the_loss_gradients_and_state_of_nn_lstm(layers, with_state):
    fast = make_model(layers).train()
    reference = copy.deepcopy(fast)
    reference.fast = False
    x, y = tokens()
    state = random_state(layers) if with_state else None
    assert fast.uses_fast_path(x) and not reference.uses_fast_path(x)
    assert_same(loss_and_grads(fast, x, y, state), loss_and_grads(reference, x, y, state))


def test_streams_shared_among_threads_give_the_same_result():
    """With 2 threads and enough streams, each thread runs its own part of the batch (float64:
    the comparison is then exact to rounding whatever the summation order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        batch = 2 * recurrence.MIN_PART + 3
        assert len(recurrence.batch_parts(batch)) == 2
        fast = make_model(layers=2).double().train()
        reference = copy.deepcopy(fast)
        reference.fast = False
        g = torch.Generator().manual_seed(4)
        x = torch.randint(len(VOCAB), (batch, STEPS + 1), generator=g)
        state = tuple(torch.randn(2, batch, HIDDEN, generator=g, dtype=torch.float64) for _ in range(2))
        a = loss_and_grads(fast, x[:, :-1], x[:, 1:], state)
        b = loss_and_grads(reference, x[:, :-1], x[:, 1:], state)
    finally:
        torch.set_num_threads(threads)
    assert_same(a, b)
    assert torch.get_num_threads() == threads


def test_fast_path_is_only_for_cpu_training_with_gradients():
    model = make_model()
    x, _ = tokens()
    assert model.train().uses_fast_path(x)
    with torch.no_grad():
        assert not model.uses_fast_path(x)
    assert not model.eval().uses_fast_path(x)


def layerwise_reference(model: CharLM, x, state, p: float):
    """nn.LSTM one layer at a time, dropout masks drawn as the fast path draws them (after each
    layer, in (batch, steps, hidden) order): the fast path with dropout must give the same."""
    batch, steps = x.shape
    out = model.embedding(x)
    h_n, c_n = [], []
    for layer in range(model.lstm.num_layers):
        with torch.random.fork_rng():  # its initialization must not consume the masks' random numbers
            single = nn.LSTM(out.shape[-1], HIDDEN, batch_first=True)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            setattr(single, f"{name}_l0", getattr(model.lstm, f"{name}_l{layer}"))  # shared: grads reach model
        out, (h, c) = single(out, (state[0][layer : layer + 1], state[1][layer : layer + 1]))
        h_n.append(h[0])
        c_n.append(c[0])
        out = out * dropout_mask((batch, steps, HIDDEN), p, out)
    return model.head(out), (torch.stack(h_n), torch.stack(c_n))


@pytest.mark.parametrize("layers", [1, 2])
def test_fast_path_applies_dropout_between_layers_and_before_the_head(layers):
    p = 0.3
    fast = make_model(layers, dropout=p).train()
    x, y = tokens()
    state = random_state(layers)
    expected = copy.deepcopy(fast)
    expected.forward = lambda tokens, state: layerwise_reference(expected, tokens, state, p)
    got = loss_and_grads(fast, x, y, state, dropout_seed=5)
    assert_same(got, loss_and_grads(expected, x, y, state, dropout_seed=5))
    no_dropout = loss_and_grads(fast, x, y, state, dropout_seed=6)
    assert not torch.allclose(got[0], no_dropout[0])  # another seed, other masks: dropout is on
    if layers == 1:  # nn.LSTM's own path draws the same mask before the head
        reference = copy.deepcopy(fast)
        reference.fast = False
        assert_same(got, loss_and_grads(reference, x, y, state, dropout_seed=5))


@pytest.mark.parametrize("train", [True, False])
def test_state_carried_across_chunks_gives_the_one_pass_result(train):
    model = make_model(layers=2).train(train)
    x, _ = tokens(steps=2 * STEPS)
    with torch.set_grad_enabled(train):
        whole, (h, c) = model(x)
        first, state = model(x[:, :STEPS])
        second, (h2, c2) = model(x[:, STEPS:], state)
    assert h.shape == c.shape == (2, BATCH, HIDDEN)
    assert torch.allclose(torch.cat([first, second], dim=1), whole, atol=1e-5)
    assert torch.allclose(h2, h, atol=1e-5) and torch.allclose(c2, c, atol=1e-5)


def test_two_forward_passes_before_one_backward_keep_their_own_buffers():
    """Gradient accumulation: the second call must not reuse the first call's stored tensors."""
    fast = make_model(layers=2).train()
    reference = copy.deepcopy(fast)
    reference.fast = False
    x, y = tokens()
    x2, y2 = tokens(seed=3)
    for model in (fast, reference):
        model.zero_grad()
        total = sum(
            nn.functional.cross_entropy(model(a)[0].reshape(-1, len(VOCAB)), b.reshape(-1)) for a, b in ((x, y), (x2, y2))
        )
        total.backward()
    for (name, a), b in zip(fast.named_parameters(), reference.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name


def test_returned_state_and_logits_survive_later_training_steps():
    """The fast path reuses its big buffers from step to step; nothing it returns may share them."""
    model = make_model(layers=2).train()
    x, y = tokens()
    logits, state = model(x)
    nn.functional.cross_entropy(logits.reshape(-1, len(VOCAB)), y.reshape(-1)).backward()
    kept = (logits.detach().clone(), *(s.detach().clone() for s in state))
    for seed in (3, 4):
        other, _ = tokens(seed)
        out, _ = model(other)
        out.sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(kept, (logits.detach(), *(s.detach() for s in state))))


def test_checkpoint_is_a_plain_state_dict_with_nn_lstm_names():
    model = make_model(layers=2)
    keys = set(model.state_dict())
    assert {"embedding.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l1", "lstm.bias_ih_l1", "head.weight"} <= keys
    rebuilt = CharLM(CharLMSpec(**model.spec.to_dict()))
    rebuilt.load_state_dict(model.state_dict())
    assert model.spec.to_dict() == {"vocab_size": len(VOCAB), "embedding_size": 4, "hidden_size": HIDDEN, "num_layers": 2, "dropout": 0.0}


# --- the TorchScript artifact ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def scripted():
    return artifact.script(make_model(layers=2), VOCAB, lowercase=True)


def test_artifact_carries_vocabulary_and_text_settings(scripted):
    assert list(scripted.vocab) == VOCAB and scripted.lowercase is True and scripted.task == "charlm"


def test_artifact_lowercases_and_maps_unseen_characters_to_the_unknown_symbol(scripted):
    assert scripted.encode("Ab\nÉé—z") == [3, 4, 1, 8, 8, 0, 0]
    cased = artifact.script(make_model(), VOCAB, lowercase=False)
    assert cased.encode("Ab\nÉé") == [0, 4, 1, 0, 8]


def test_artifact_encodes_any_unicode_text_as_python_lowercasing_does():
    """1- to 4-byte UTF-8 characters, and the one character whose lowercase is two (U+0130)."""
    vocab = [artifact.UNKNOWN, "a", "i", "\u0307", "é", "ß", "ω", "中", "😀", "k"]
    sampler = artifact.script(CharLM(CharLMSpec(len(vocab), 2, 3, 1, 0.0)), vocab, lowercase=True)
    text = "AİΩ中😀ẞÉ é\u212a?xİ"  # U+1E9E capital sharp s -> ß, U+212A Kelvin sign -> k
    index = {ch: i for i, ch in enumerate(vocab)}
    assert sampler.encode(text) == [index.get(c, 0) for c in "".join(ch.lower() for ch in text)]
    assert sampler.encode("") == []


def test_bits_is_the_eager_cross_entropy_in_bits(scripted):
    model = make_model(layers=2).eval()
    text = "abc de\nbad cab\neddie é bee"
    ids = torch.tensor(scripted.encode(text)).unsqueeze(0)
    with torch.no_grad():
        logits, _ = model(ids[:, :-1])
        nats = nn.functional.cross_entropy(logits[0], ids[0, 1:]).item()
    assert scripted.bits(text) == pytest.approx(nats / math.log(2), rel=1e-5)


def test_forward_gives_log_probabilities(scripted):
    logp = scripted(torch.tensor([[3, 4, 5], [1, 2, 3]]))
    assert logp.shape == (2, 3, len(VOCAB))
    assert torch.allclose(logp.exp().sum(-1), torch.ones(2, 3), atol=1e-5)


def test_sampling_never_returns_the_unknown_symbol():
    model = make_model()
    with torch.no_grad():
        model.head.bias[0] = 50.0  # the unknown symbol is by far the likeliest
    sampler = artifact.script(model, VOCAB, lowercase=True)
    text = sampler.generate("abc", 200, 1.0, 0)
    assert len(text) == 200 and "\ufffd" not in text


def test_empty_prompt_and_zero_chars_are_answered(scripted):
    assert len(scripted.generate("", 30, 0.8, 1)) == 30
    assert scripted.generate("abc", 0, 1.0, 1) == ""


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_must_be_above_zero(scripted, temperature):
    with pytest.raises(torch.jit.Error, match="temperature must be above 0"):
        scripted.generate("abc", 5, temperature, 1)


def test_export_saves_a_file_that_matches_the_eager_model(tmp_path):
    out = tmp_path / "model.ts"
    check = artifact.export(make_model(layers=2), VOCAB, True, np.arange(40) % len(VOCAB), out)
    assert check["checked_chars"] == 40 and check["max_abs_diff"] <= artifact.TOLERANCE
    assert torch.jit.load(str(out)).generate("ab", 5, 1.0, 3) == artifact.script(make_model(layers=2), VOCAB, True).generate("ab", 5, 1.0, 3)


def test_export_refuses_a_file_that_differs_from_the_eager_model(tmp_path, monkeypatch):
    model = make_model()
    tampered = copy.deepcopy(model)
    with torch.no_grad():
        tampered.head.bias[3] += 0.01
    real_script = artifact.script
    monkeypatch.setattr(artifact, "script", lambda m, vocab, lowercase: real_script(tampered, vocab, lowercase))
    out = tmp_path / "model.ts"
    with pytest.raises(LstmopsError, match="differs from the eager model"):
        artifact.export(model, VOCAB, True, np.arange(40) % len(VOCAB), out)
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written left behind


def test_exported_file_generates_deterministically_with_torch_alone(tmp_path):
    out = tmp_path / "model.ts"
    artifact.export(make_model(layers=2), VOCAB, True, np.arange(40) % len(VOCAB), out)
    program = textwrap.dedent(f"""
        import sys
        sys.modules["lstmops"] = None  # import lstmops fails: the file must not need it
        import torch
        m = torch.jit.load({str(out)!r})
        texts = [m.generate("Abc", 40, 1.0, seed) for seed in (7, 7, 8, 9)]
        print(repr(texts))
        print(m.bits("abc de\\nbad"))
    """)
    run = subprocess.run([sys.executable, "-I", "-c", program], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    texts = eval(lines[0])  # noqa: S307 - our own repr
    assert texts[0] == texts[1] and len(texts[0]) == 40
    assert texts[0] != texts[2] or texts[0] != texts[3]  # another seed, (almost surely) another text
    assert float(lines[1]) > 0
