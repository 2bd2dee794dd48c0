"""The arena's shared decode loop: answers join and leave at any step, and each gets what it would alone."""

import queue
import threading
import time

import pytest
import torch

from tunelab.arena.chat import BASE, Arena, Request, Sampling
from tunelab.common import workspace

from .rows import MSGS, make_run

OTHER = [{"role": "user", "content": "Name three colours and say why you like one of them."}]
THIRD = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello?"}]


def greedy(n: int) -> Sampling:
    return Sampling(temperature=0.0, max_new_tokens=n)


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir):
    return make_run(tiny_model_dir, "20000101-000100-loop-lora", seed=7)


def collect(events: queue.Queue, n: int, until=None, timeout: float = 120.0, out: dict | None = None) -> dict:
    """Read events until `n` answers are done (or `until()` holds); returns {seat: info},
    going on from `out` when given."""
    out = {} if out is None else out
    deadline = time.monotonic() + timeout
    while sum(v.get("end") is not None for v in out.values()) < n:
        if until and until(out):
            return out
        kind, seat, payload = events.get(timeout=max(0.1, deadline - time.monotonic()))
        if kind == "queued":
            for s in seat:
                out.setdefault(s, {"ids": []}).setdefault("places", []).append(payload)
            continue
        info = out.setdefault(seat, {"ids": []})
        if kind == "token":
            info["ids"].append(payload)
        else:
            info["end"] = (kind, payload)
    return out


def alone(model_dir: str, request: Request) -> list[int]:
    """The token ids one request gets in an arena of its own."""
    arena, events = Arena(model_dir), queue.Queue()
    arena.submit([request], threading.Event(), events)
    return collect(events, 1)[0]["ids"]


def reference_logits(model_dir: str, row, adapter_dir=None) -> torch.Tensor:
    """What the plain model (transformers' own attention, no loop) gives at each position
    where the row chose a token: prompt + answer in one forward."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    if adapter_dir:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    seq = torch.tensor([row.prompt + row.ids])
    with torch.no_grad():
        logits = model(input_ids=seq).logits[0]
    first = len(row.prompt) - 1
    return logits[first:first + len(row.logits)]


def test_rows_that_join_mid_loop_get_the_logits_they_would_get_alone(tiny_model_dir, lora_run):
    arena, events, cancel = Arena(tiny_model_dir), queue.Queue(), threading.Event()
    _, (first,) = arena.submit([Request(BASE, MSGS, greedy(60))], cancel, events, record=True)
    got = collect(events, 1, until=lambda o: len(o.get(0, {}).get("ids", [])) >= 5)
    under_way = len(got[0]["ids"])
    assert 5 <= under_way < 60               # the first answer is under way...
    joiners = [Request(BASE, OTHER, greedy(12)), Request(f"run:{lora_run}", THIRD, greedy(12)),
               Request(f"run:{lora_run}", MSGS, greedy(12))]
    events2 = queue.Queue()
    _, (second,) = arena.submit(joiners, threading.Event(), events2, record=True)
    late = collect(events2, 3)
    assert all(v["end"][0] == "done" for v in late.values())
    assert len(got[0]["ids"]) == under_way and "end" not in got[0]
    assert first.rows[0].length < len(first.rows[0].prompt) + 60   # ...and still going when they are done
    collect(events, 1, out=got)
    assert arena.loop_stats()[f"base:{tiny_model_dir}"]["peak_rows"] == 4

    adapter_dir = workspace.runs_dir() / lora_run / "model"
    rows = first.rows + second.rows
    for row, adapter in zip(rows, [None, None, adapter_dir, adapter_dir]):
        want = reference_logits(tiny_model_dir, row, adapter)
        ours = torch.stack(row.logits)
        torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-4)
        assert ours.argmax(-1)[:len(row.ids)].tolist() == row.ids   # greedy: the best token each time
    for row, req in zip(second.rows, joiners):
        assert row.ids == alone(tiny_model_dir, req)               # the same tokens as in a loop of its own
    assert second.rows[1].ids != second.rows[2].ids or THIRD != MSGS
    base_vs_tuned = alone(tiny_model_dir, Request(BASE, MSGS, greedy(12)))
    assert second.rows[2].ids != base_vs_tuned                       # the adapter rows really ran the adapter


def test_a_cancelled_row_frees_its_slot_and_leaves_the_others_unchanged(tiny_model_dir):
    hot = Sampling(temperature=1.0, top_p=0.95, max_new_tokens=24, seed=5)
    keep = [Request(BASE, MSGS, hot), Request(BASE, OTHER, Sampling(temperature=0.8, max_new_tokens=24, seed=9))]
    arena, events, stop = Arena(tiny_model_dir), queue.Queue(), threading.Event()
    kept_events = queue.Queue()
    arena.submit(keep, threading.Event(), kept_events)
    arena.submit([Request(BASE, THIRD, Sampling(temperature=1.0, max_new_tokens=200, seed=1))], stop, events)
    collect(events, 1, until=lambda o: len(o.get(0, {}).get("ids", [])) >= 3)
    stop.set()
    cut = collect(events, 1)
    assert cut[0]["end"] == ("done", None) and len(cut[0]["ids"]) < 200
    loop = arena.loop_of(f"base:{tiny_model_dir}")
    assert loop.stats()["rows"] <= 2           # its slot is free at once
    kept = collect(kept_events, 2)
    for i, req in enumerate(keep):             # sampled answers, and still exactly what they get alone
        assert kept[i]["ids"] == alone(tiny_model_dir, req)


def test_a_failing_adapter_fails_only_its_rows(tiny_model_dir, lora_run):
    broken = make_run(tiny_model_dir, "20000101-000101-loop-broken", seed=3)
    (workspace.runs_dir() / broken / "model" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    arena, events, cancel = Arena(tiny_model_dir), queue.Queue(), threading.Event()
    base_req = Request(BASE, MSGS, greedy(30))
    arena.submit([base_req], cancel, events)
    got = collect(events, 1, until=lambda o: len(o.get(0, {}).get("ids", [])) >= 2)   # under way
    replies = list(arena.stream([Request(f"run:{broken}", MSGS, greedy(8)), Request(f"run:{lora_run}", MSGS, greedy(8)),
                                 Request(BASE, OTHER, greedy(8))]))[-1]
    assert replies[0].done and replies[0].error and broken not in (replies[0].text or "")
    assert replies[1].error is None and replies[1].tokens > 0
    assert replies[2].error is None and replies[2].tokens > 0
    first = collect(events, 1, out=got)
    assert first[0]["end"][0] == "done" and first[0]["ids"] == alone(tiny_model_dir, base_req)


def test_a_step_that_fails_for_newcomers_ends_only_theirs(tiny_model_dir, monkeypatch):
    """An answer whose first forward fails (an adapter that loads but cannot run, say) is
    ended alone; the answers under way go on and finish as they would have."""
    from tunelab.arena import loop as loop_mod

    arena, events = Arena(tiny_model_dir), queue.Queue()
    base_req = Request(BASE, MSGS, greedy(30))
    arena.submit([base_req], threading.Event(), events)
    got = collect(events, 1, until=lambda o: len(o.get(0, {}).get("ids", [])) >= 2)
    real = loop_mod.DecodeLoop._forward

    def picky(self, entry, rows):
        if any(r.seat.request.messages is OTHER for r in rows if not r.length):
            raise RuntimeError("this newcomer cannot run (simulated)")
        return real(self, entry, rows)

    monkeypatch.setattr(loop_mod.DecodeLoop, "_forward", picky)
    (r,) = list(arena.stream([Request(BASE, OTHER, greedy(8))]))[-1]
    assert r.done and "cannot run" in r.error
    first = collect(events, 1, out=got)
    assert first[0]["end"][0] == "done" and first[0]["ids"] == alone(tiny_model_dir, base_req)


def test_the_loop_stops_when_idle_and_restarts_on_the_next_request(tiny_model_dir):
    arena = Arena(tiny_model_dir, idle_s=0.2)
    (r,) = list(arena.stream([Request(BASE, MSGS, greedy(4))]))[-1]
    assert r.error is None and r.tokens > 0
    loop = arena.loop_of(f"base:{tiny_model_dir}")
    thread = loop.thread()
    deadline = time.monotonic() + 120   # idle for 0.2 s it stops; the ceiling only guards a hang
    while loop.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not loop.running()
    thread.join(timeout=120)
    assert thread is not None and not thread.is_alive()
    (r,) = list(arena.stream([Request(BASE, MSGS, greedy(4))]))[-1]   # a new thread, the same model
    assert r.error is None and r.tokens > 0 and arena.loop_of(f"base:{tiny_model_dir}") is loop


def test_a_full_loop_admits_in_arrival_order_and_tells_each_its_place(tiny_model_dir):
    arena = Arena(tiny_model_dir, max_rows=2)
    queues = [queue.Queue() for _ in range(3)]
    arena.submit([Request(BASE, MSGS, greedy(20)), Request(BASE, OTHER, greedy(20))], threading.Event(), queues[0])
    collect(queues[0], 2, until=lambda o: len(o.get(0, {}).get("ids", [])) >= 1)   # the loop is full
    arena.submit([Request(BASE, THIRD, greedy(4)), Request(BASE, MSGS, greedy(4))], threading.Event(), queues[1])
    arena.submit([Request(BASE, OTHER, greedy(4))], threading.Event(), queues[2])
    second, third = collect(queues[1], 2), collect(queues[2], 1)
    assert second[0]["places"][0] == 1 and third[0]["places"][:1] == [2]   # first and second in line
    assert 1 in third[0]["places"]                                         # then moved up
    assert all(v["end"][0] == "done" and v["ids"] for v in [*second.values(), *third.values()])
    assert arena.loop_stats()[f"base:{tiny_model_dir}"]["peak_rows"] == 2   # never more than the cap


def test_a_big_batch_leaves_room_for_others_while_they_wait(tiny_model_dir):
    """A batch of eight answers fills a 4-row loop; a chat arriving after it gets a row as
    soon as one frees, ahead of the batch's remaining answers (its share is 2 while others wait)."""
    arena = Arena(tiny_model_dir, max_rows=4)
    big, small = queue.Queue(), queue.Queue()
    arena.submit([Request(BASE, MSGS, greedy(6 + 2 * i)) for i in range(8)], threading.Event(), big)
    collect(big, 8, until=lambda o: len(o) >= 1)
    arena.submit([Request(BASE, OTHER, greedy(3))], threading.Event(), small)
    order = []
    ends = {}
    while len(ends) < 9:
        for name, q in (("big", big), ("small", small)):
            try:
                kind, seat, payload = q.get(timeout=0.05)
            except queue.Empty:
                continue
            if kind in ("done", "error"):
                ends[(name, seat)] = kind
                order.append((name, seat))
    assert set(ends.values()) == {"done"}
    assert order.index(("small", 0)) < order.index(("big", 7))   # it did not wait for the whole batch


def test_an_adapter_that_fails_to_load_leaves_the_base_as_it_was(tiny_model_dir, lora_run):
    """Weights whose shapes do not fit their config fail inside PEFT, after it has put LoRA
    layers into the base: those come out again, so the base (and a later adapter) answer
    exactly as before."""
    import json

    from transformers import AutoModelForCausalLM
    bad = make_run(tiny_model_dir, "20000101-000102-loop-misfit", seed=4)
    cfg_path = workspace.runs_dir() / bad / "model" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "r": cfg["r"] * 2}))
    arena = Arena(tiny_model_dir)
    misfit, base = list(arena.stream([Request(f"run:{bad}", MSGS, greedy(4)), Request(BASE, MSGS, greedy(6))]))[-1]
    assert misfit.error and "size" in misfit.error.lower() and base.error is None
    (entry,) = [arena.loaded_entry(key) for key in arena.loaded()]
    assert not entry.adapters and not hasattr(entry.model, "peft_config")
    ids = torch.tensor([[1, 5, 42, 7, 300, 12, 9, 77, 4, 18]])
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(ids).logits
        assert torch.equal(entry.model(input_ids=ids).logits, want)
    (good,) = list(arena.stream([Request(f"run:{lora_run}", MSGS, greedy(6))]))[-1]
    assert good.error is None and good.tokens > 0


def test_the_next_turn_starts_from_the_kept_keys_and_values(tiny_model_dir, lora_run):
    """A conversation's second turn computes only its new tokens (the first turn's keys and
    values are kept), and still gets the logits the plain model gives on the whole prompt,
    for the base and for an adapter; the base's kept prefix is not offered to the adapter."""
    arena = Arena(tiny_model_dir)
    fresh = Arena(tiny_model_dir, cache_mb=0)   # the same requests with nothing kept
    adapter_dir = workspace.runs_dir() / lora_run / "model"
    loop_key = f"base:{tiny_model_dir}"
    for source, adapter in [(BASE, None), (f"run:{lora_run}", adapter_dir)]:
        (first,) = list(arena.stream([Request(source, MSGS, greedy(12))]))[-1]
        assert first.error is None and first.text
        before = arena.loop_stats()[loop_key]
        turn = MSGS + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "Say more."}]
        events = queue.Queue()
        _, (ticket,) = arena.submit([Request(source, turn, greedy(10))], threading.Event(), events, record=True)
        got = collect(events, 1)
        (row,) = ticket.rows
        after = arena.loop_stats()[loop_key]
        reused = after["cache"]["reused_tokens"] - before["cache"]["reused_tokens"]
        computed = after["prefilled"] - before["prefilled"]
        assert reused > len(row.prompt) // 2 and reused + computed == len(row.prompt)
        torch.testing.assert_close(torch.stack(row.logits), reference_logits(tiny_model_dir, row, adapter),
                                   rtol=1e-4, atol=1e-4)
        (plain,) = list(fresh.stream([Request(source, turn, greedy(10))]))[-1]
        assert got[0]["ids"] and plain.text == arena.loaded_entry(loop_key).tokenizer.decode(got[0]["ids"],
                                                                                         skip_special_tokens=True)
    assert fresh.loop_stats()[loop_key]["cache"]["hits"] == 0


def test_the_prefix_cache_keeps_within_its_bound_and_matches_only_its_adapter():
    from tunelab.arena.prefix import PrefixCache

    def kv(n, fill=1.0):
        return {layer: (torch.full((2, n + 5, 4), fill), torch.full((2, n + 5, 4), -fill)) for layer in range(3)}

    per_token = 3 * 2 * 2 * 4 * 2          # layers x (k, v) x heads x dim x bf16 bytes
    cache = PrefixCache(max_bytes=per_token * 100, min_tokens=4)
    a = list(range(10, 50))                  # 40 tokens
    cache.put("x", a[:20], kv(20), torch.bfloat16)
    cache.put("x", a, kv(40, 2.0), torch.bfloat16)       # extends the first: it replaces it
    assert cache.stats()["entries"] == 1 and cache.bytes == per_token * 40
    n, got = cache.match("x", a[:30] + [1, 2, 3])
    assert n == 30 and got[0][0].dtype == torch.bfloat16 and float(got[2][1][0, 0, 0]) == -2.0
    assert cache.match("x", a)[0] == 39                   # the last prompt token is always computed
    assert cache.match("y", a) == (0, None)                # another adapter's keys are not ours
    assert cache.match("x", a[:3] + [0] * 10) == (0, None)  # too short a prefix to be worth it
    cache.put("y", list(range(100, 150)), kv(50), torch.bfloat16)
    cache.put("z", list(range(200, 230)), kv(30), torch.bfloat16)   # over the bound: the oldest goes
    assert cache.bytes <= per_token * 100 and cache.match("x", a)[0] == 0
    assert cache.match("z", list(range(200, 230)) + [7])[0] == 30
    cache.put("w", list(range(300, 420)), kv(120), torch.bfloat16)  # bigger than the whole bound: not kept
    assert cache.match("w", list(range(300, 420)))[0] == 0 and cache.bytes <= per_token * 100


def test_the_thread_tuner_keeps_the_faster_thread_count():
    from tunelab.arena.chatdevice import ThreadTuner

    def drive(tuner, seconds_per_answer: dict, steps: int, prefill_every: int = 0) -> list[int]:
        used = []
        for i in range(steps):
            n = tuner.choose(2)
            used.append(n)
            prefill = bool(prefill_every) and i % prefill_every == 0
            # a prefill step is slow whatever the threads: it must not decide anything
            tuner.record(n, (10.0 if prefill else seconds_per_answer[n]) * 30, 30, prefill)
        return used

    crowded = ThreadTuner(every=10, trial=3)       # one thread is faster (the cores are shared)
    used = drive(crowded, {1: 0.004, 2: 0.006}, 40, prefill_every=7)
    assert used[0] == 2 and crowded.current == 1 and crowded.changes == 1
    assert used[-5:] == [1] * 5
    idle = ThreadTuner(every=10, trial=3)           # both threads are faster: a trial, then back
    used = drive(idle, {1: 0.006, 2: 0.004}, 60)
    assert idle.current == 2 and idle.trials >= 3 and idle.changes == 0
    assert used.count(1) <= idle.trials * 4          # only the trial steps ran on one thread
    close = ThreadTuner(every=10, trial=3)          # within the margin: no change for noise
    drive(close, {1: 0.0049, 2: 0.005}, 60)
    assert close.current == 2
    alone = ThreadTuner(every=10, trial=3)
    assert {alone.choose(1) for _ in range(30)} == {1}   # one core: nothing to try
    back = ThreadTuner(every=10, trial=3)           # conditions change: it follows
    drive(back, {1: 0.004, 2: 0.006}, 40)
    assert back.current == 1
    drive(back, {1: 0.006, 2: 0.004}, 40)
    assert back.current == 2 and back.changes == 2
