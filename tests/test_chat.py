"""The arena's generation: one base for every adapter, batched panes, errors stay in their pane."""

import random
import threading

import pytest
import torch

from tunelab.modelio import loading
from tunelab.common import workspace
from tunelab.arena.chat import BASE, PEFT_BASE, Arena, Request, Sampling, blind_order, sources
from tunelab.arena.packed import sample

from .rows import MSGS, make_run

GREEDY = Sampling(temperature=0.0, max_new_tokens=8)

@pytest.fixture(scope="module")
def adapter_run(tiny_model_dir):
    return make_run(tiny_model_dir, "20000101-000000-chat-lora")


@pytest.fixture(scope="module")
def full_run(tiny_model_dir):
    return make_run(tiny_model_dir, "20000101-000001-chat-full", kind="full")


def last(stream):
    out = None
    for out in stream:
        pass
    return out


def test_sources_list_the_base_and_finished_runs(tiny_model_dir, adapter_run, full_run):
    keys = [k for _, k in sources(tiny_model_dir)]
    assert keys[0] == BASE and f"run:{adapter_run}" in keys and f"run:{full_run}" in keys


def test_adapters_off_gives_exactly_the_base_logits(tiny_model_dir, adapter_run):
    from transformers import AutoModelForCausalLM

    arena = Arena(tiny_model_dir)
    last(arena.stream([Request(BASE, MSGS, GREEDY), Request(f"run:{adapter_run}", MSGS, GREEDY)]))
    (entry,) = [arena.loaded_entry(k) for k in arena.loaded()]  # one copy of the base serves both
    name = entry.adapters[adapter_run]
    ids = torch.tensor([[1, 5, 42, 7, 300, 12, 9, 77, 4, 18]])  # > 8 rows: the plain F.linear path
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    from tunelab.arena.decoding import peft_adapters
    peft_adapters(entry.model)   # the arena's answers left PEFT's adapters off (decoding.row_adapters)
    with torch.no_grad():
        want = fresh(ids).logits
        base = entry.model(input_ids=ids, adapter_names=[PEFT_BASE]).logits
        tuned = entry.model(input_ids=ids, adapter_names=[name]).logits
        mixed = entry.model(input_ids=ids.repeat(2, 1), adapter_names=[PEFT_BASE, name]).logits
    assert torch.equal(base, want)
    assert not torch.allclose(tuned, want, atol=1e-3)
    torch.testing.assert_close(mixed[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], tuned[0], rtol=1e-5, atol=1e-5)


def test_row_masks_give_the_same_rows_as_peft_mixed_batches(tiny_model_dir, adapter_run):
    from tunelab.arena.decoding import peft_adapters, row_adapters

    arena = Arena(tiny_model_dir)
    last(arena.stream([Request(f"run:{adapter_run}", MSGS, GREEDY)]))
    (entry,) = [arena.loaded_entry(k) for k in arena.loaded()]
    name = entry.adapters[adapter_run]
    names = [PEFT_BASE, name, PEFT_BASE, name]
    ids = torch.tensor([[1, 5, 42, 7, 300, 12, 9, 77, 4, 18]]).repeat(4, 1)
    peft_adapters(entry.model)   # the arena's answer left PEFT's adapters off
    with torch.no_grad():
        peft_rows = entry.model(input_ids=ids, adapter_names=names).logits
        with row_adapters(entry.model, names, PEFT_BASE) as by_mask:
            assert by_mask
            ours = entry.model(input_ids=ids).logits
        peft_adapters(entry.model)
        after = entry.model(input_ids=ids[:1], adapter_names=[name]).logits   # PEFT's own forward again
    torch.testing.assert_close(ours, peft_rows, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after[0], peft_rows[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours[0], ours[1], atol=1e-3)   # the adapter row really differs


def test_two_panes_stream_in_one_batch_and_differ(tiny_model_dir, adapter_run):
    arena = Arena(tiny_model_dir)
    seen = []
    for replies in arena.stream([Request(BASE, MSGS, GREEDY), Request(f"run:{adapter_run}", MSGS, GREEDY),
                                 Request(BASE, MSGS, GREEDY)]):
        seen.append([r.tokens for r in replies])
    base, tuned, base_again = replies
    assert all(r.done and r.error is None for r in replies)
    assert 0 < base.tokens <= 8 and 0 < tuned.tokens <= 8
    assert base.text == base_again.text          # greedy and the same source: same row, same answer
    assert base.text != tuned.text               # the adapter changes what the model says
    assert base.first_token_s is not None and base.tokens_per_s > 0
    assert len(seen) > 3 and seen[1] != seen[-1]  # it streamed: several yields as tokens came


def test_full_runs_load_separately_within_the_memory_bound(tiny_model_dir, full_run, adapter_run):
    arena = Arena(tiny_model_dir, max_models=1)
    replies = last(arena.stream([Request(BASE, MSGS, GREEDY), Request(f"run:{full_run}", MSGS, GREEDY)]))
    assert all(r.done and r.error is None and r.tokens > 0 for r in replies)
    assert replies[0].text != replies[1].text
    assert len(arena.loaded()) == 1              # the other model was let go after use
    replies = last(arena.stream([Request(f"run:{adapter_run}", MSGS, GREEDY)]))
    assert replies[0].error is None and arena.loaded() == [f"base:{tiny_model_dir}"]


def test_a_qlora_adapter_answers_on_the_4bit_base_it_was_trained_on(tiny_model_dir, adapter_run):
    """The arena serves a QLoRA run on an NF4 copy of its base (what it trained on), not on
    the full base the LoRA runs share: the same adapter weights answer differently there,
    exactly as PEFT on a 4-bit base does."""
    from peft import PeftModel
    qlora_run = make_run(tiny_model_dir, "20000101-000002-chat-qlora", kind="qlora")
    arena = Arena(tiny_model_dir)
    lora, qlora = last(arena.stream([Request(f"run:{adapter_run}", MSGS, GREEDY),
                                     Request(f"run:{qlora_run}", MSGS, GREEDY)]))
    assert lora.error is None and qlora.error is None
    assert sorted(arena.loaded()) == sorted([f"base:{tiny_model_dir}", f"nf4+dq:{tiny_model_dir}"])
    assert arena.locate(f"run:{qlora_run}")[3]["base_quant"] == "nf4"
    assert "base_quant" not in arena.locate(f"run:{adapter_run}")[3]
    base4 = loading.load_model(tiny_model_dir, quant={"quant_type": "nf4", "double_quant": True})
    want = PeftModel.from_pretrained(base4, str(workspace.runs_dir() / qlora_run / "model"))
    tok = loading.load_tokenizer(tiny_model_dir)
    ids = tok.apply_chat_template(MSGS, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = want.generate(**ids, max_new_tokens=qlora.tokens, do_sample=False)
    assert qlora.text.strip() == tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_per_row_budgets_and_temperatures_in_one_batch(tiny_model_dir):
    arena = Arena(tiny_model_dir)
    short = Sampling(temperature=0.0, max_new_tokens=3)
    hot = Sampling(temperature=1.5, top_p=0.95, max_new_tokens=12, seed=3)
    a, b = last(arena.stream([Request(BASE, MSGS, short), Request(BASE, MSGS, hot)]))
    assert a.done and b.done and a.error is None and b.error is None
    assert a.tokens <= 3 and b.tokens <= 12


def test_a_failing_side_reports_its_error_and_frees_the_model(tiny_model_dir, monkeypatch):
    arena = Arena(tiny_model_dir)
    left, right = last(arena.stream([Request(BASE, MSGS, GREEDY), Request("run:no-such-run", MSGS, GREEDY)]))
    assert left.error is None and left.tokens > 0
    assert right.done and "no-such-run" in right.error
    (entry,) = [arena.loaded_entry(k) for k in arena.loaded()]

    def boom(*a, **kw):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(entry.model, "forward", boom)
    (r,) = last(arena.stream([Request(BASE, MSGS, GREEDY)]))
    assert r.done and "out of memory" in r.error and not entry.lock.locked()
    monkeypatch.undo()
    (r,) = last(arena.stream([Request(BASE, MSGS, GREEDY)]))
    assert r.error is None and r.tokens > 0


def test_a_reply_stopped_by_its_token_limit_says_it_was_cut(tiny_model_dir):
    # A random tiny model does not stop by itself within 3 tokens.
    (r,) = last(Arena(tiny_model_dir).stream([Request(BASE, MSGS, Sampling(temperature=0.0, max_new_tokens=3))]))
    assert r.tokens == 3 and r.cut


def test_bad_sampling_names_the_field(tiny_model_dir):
    (r,) = last(Arena(tiny_model_dir).stream([Request(BASE, MSGS, Sampling(top_p=0.0))]))
    assert r.done and "top_p" in r.error


def test_cancel_stops_generation(tiny_model_dir):
    cancel = threading.Event()
    arena = Arena(tiny_model_dir)
    stream = arena.stream([Request(BASE, MSGS, Sampling(temperature=1.0, max_new_tokens=400))], cancel=cancel)
    for i, (r,) in enumerate(stream):
        if r.tokens >= 2:
            cancel.set()
    assert r.done and r.tokens < 400 and not r.cut   # stopped, not cut by the limit


def test_row_sampling_matches_temperature_and_top_p():
    """Greedy rows take the best token; a sampled row draws only from HF's top-p set after
    its temperature, with its own generator (the same seed, the same draws)."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    scores = torch.randn(3, 50)
    rows = [Sampling(temperature=0.0), Sampling(temperature=0.7, top_p=0.8), Sampling(temperature=1.3, top_p=1.0)]
    want = TopPLogitsWarper(0.8)(None, TemperatureLogitsWarper(0.7)(None, scores[1:2].clone()))[0]
    allowed = set(torch.isfinite(want).nonzero().flatten().tolist())
    assert 1 < len(allowed) < 50
    draws = [sample(scores, rows, [torch.Generator().manual_seed(s) for s in (0, k, k)]) for k in range(200)]
    assert all(d[0] == int(scores[0].argmax()) for d in draws)
    assert {d[1] for d in draws} == allowed                 # every allowed token comes up, and no other
    assert len({d[2] for d in draws}) > len(allowed)         # top-p 1.0 keeps the whole distribution
    again = [sample(scores, rows, [torch.Generator().manual_seed(s) for s in (0, k, k)]) for k in range(20)]
    assert again == draws[:20]
    # The 256-candidate shortcut and the full sort agree: a flat distribution needs the sort.
    flat = torch.zeros(1, 1000)
    picks = {sample(flat, [Sampling(temperature=1.0, top_p=0.9)], [torch.Generator().manual_seed(k)])[0]
             for k in range(1000)}
    assert len(picks) > 256


def test_blind_sides_are_balanced():
    rng = random.Random(1234)
    flips = [blind_order(rng) for _ in range(10_000)]
    assert 4_800 < sum(flips) < 5_200  # a fair coin: within 4 standard deviations (50)
    repeats = sum(a == b for a, b in zip(flips, flips[1:]))
    assert 4_800 < repeats < 5_200     # and no pattern: the next side is not predictable from the last


def test_small_batch_linear_is_the_same_product():
    from tunelab.arena.decoding import fast_small_batches

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 300)
    ref = torch.nn.Linear(64, 300)
    ref.load_state_dict(lin.state_dict())
    fast_small_batches(torch.nn.Sequential(lin))
    for shape in [(1, 64), (1, 1, 64), (2, 64), (2, 1, 64), (8, 64), (3, 5, 64)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(lin(x), ref(x), rtol=1e-5, atol=1e-5)
    x = torch.randn(2, 64, requires_grad=True)
    lin(x).sum().backward()  # with gradients it is the plain layer
    assert x.grad is not None


def test_bf16_arena_streams_base_and_adapter(tiny_model_dir, adapter_run, monkeypatch):
    monkeypatch.setenv("TUNELAB_CHAT_DTYPE", "bfloat16")
    arena = Arena(tiny_model_dir)
    replies = last(arena.stream([Request(BASE, MSGS, GREEDY), Request(f"run:{adapter_run}", MSGS, GREEDY)]))
    assert all(r.done and r.error is None and r.tokens > 0 for r in replies)
    (entry,) = [arena.loaded_entry(k) for k in arena.loaded()]
    assert next(entry.model.parameters()).dtype == torch.bfloat16


def test_the_arena_dtype_is_fp32_unless_asked_and_bf16_only_where_native(monkeypatch):
    from tunelab.arena.chatdevice import chat_dtype
    monkeypatch.delenv("TUNELAB_CHAT_DTYPE")
    assert chat_dtype("cpu") == torch.float32          # the default: what the labs are checked in
    monkeypatch.setenv("TUNELAB_CHAT_DTYPE", "auto")
    native = loading.bf16_supported("cpu")
    assert chat_dtype("cpu") == (torch.bfloat16 if native else torch.float32)
    monkeypatch.setattr(loading, "bf16_supported", lambda device: False)   # an AVX2-only CPU
    assert chat_dtype("cpu") == torch.float32
    monkeypatch.setenv("TUNELAB_CHAT_DTYPE", "bfloat16")
    assert chat_dtype("cpu") == torch.bfloat16


def test_generation_threads_and_reserve_cores(monkeypatch):
    from tunelab.arena import chatdevice

    default = chatdevice.default_threads()
    monkeypatch.delenv("TUNELAB_ARENA_THREADS", raising=False)
    assert chatdevice.generation_threads() == default      # one model: every core
    assert chatdevice.generation_threads(groups=2) == 1    # several models at once: one thread each
    monkeypatch.setenv("TUNELAB_ARENA_THREADS", "3")
    assert chatdevice.generation_threads(groups=2) == 3
    monkeypatch.setenv("TUNELAB_ARENA_THREADS", "lots")
    assert chatdevice.generation_threads() == default
    try:
        chatdevice.reserve_cores()
        assert torch.get_num_threads() == 1            # the caller's thread (and new ones) on one
        assert chatdevice.generation_threads() == default     # generation still uses every core
    finally:
        torch.set_num_threads(default)


def test_stream_loads_models_in_the_generation_thread(tiny_model_dir, monkeypatch):
    """The caller's thread (a Gradio handler in the app) never runs the model load."""
    arena = Arena(tiny_model_dir)
    loaders = []
    real = arena.load_base

    def spy(name):
        loaders.append(threading.current_thread())
        return real(name)

    monkeypatch.setattr(arena, "load_base", spy)
    replies = last(arena.stream([Request(BASE, MSGS, GREEDY)]))
    assert replies[0].done and replies[0].error is None
    assert loaders and threading.current_thread() not in loaders
