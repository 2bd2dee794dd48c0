"""One decode loop per model in memory, shared by every user of the arena (continuous batching).

    loop = DecodeLoop("base:smollm2", get_entry, adapter_of, threads)
    loop.submit(Ticket(events, cancel, [Seat(0, request, "__base__"), Seat(1, request, ("run-id", path))]))
    # events then carries ("token", seat, id), ("done", seat, reason), ("error", seat, message)
    # and ("queued", [seats], place in line)

Each step of the loop is ONE forward pass over every answer being written, whoever asked
for it: the answers already under way give one token each, and answers that have just
joined give their whole prompt (their prefill). The tokens are packed into one sequence,
so every weight is read once per step however many users there are; attention is the one
part computed per answer, each against its own key/value buffer. So an answer can join
at any step and leave at any step (its end, its limit, its user's Stop) without copying
or re-padding the others, and its logits are the ones it would get alone (tests compare
them with the plain model's, token by token).

Fair shares: at most `max_rows` answers are written at once; the rest wait in arrival
order and are told their place in line. One caller (say, a batch of 40 prompts) takes at
most `share` rows while someone else is waiting, and prompts are prefilled at most
`prefill_tokens` a step, so a burst of new prompts cannot stall the answers under way.
Sampling is per answer with its own seeded generator: what an answer says does not depend
on who else is in the batch. The loop's thread starts on the first request and ends after
`idle_s` seconds with nothing to do.
"""

from __future__ import annotations

import atexit
import contextlib
import queue
import threading
import weakref
from dataclasses import dataclass, field
from typing import Callable

from ..common.lazy import lazy
from .decoding import PEFT_BASE, row_adapters

torch = lazy("torch")  # imported on first use (see common/lazy.py)

ATTENTION = "tunelab_rows"   # the attention implementation name the loop's forwards run under
TOP_CANDIDATES = 256         # top-p looks at this many best tokens first (see sample)


@dataclass
class Seat:
    """One answer a caller wants: its index in the caller's list, the request, and its
    adapter ("__base__" for none on a PEFT model, (run_id, folder) to load, None for a
    model without adapters)."""
    index: int
    request: object
    adapter: object


class Ticket:
    """One caller's answers on one loop, with the queue its events go to and the flag that
    cancels them. `record=True` keeps each answer's logits (for the tests)."""

    def __init__(self, events: queue.Queue, cancel: threading.Event, seats: list[Seat], record: bool = False):
        self.events, self.cancel, self.seats, self.record = events, cancel, seats, record
        self.tokenizer = None      # set by the loop before the first token event
        self.waiting = list(seats)  # not admitted yet
        self.active = 0             # rows of this ticket in the loop now
        self.place: int | None = None
        self.rows: list[_Row] = []  # every row made for it (the tests read their logits)
        self.loop: DecodeLoop | None = None

    def put(self, kind: str, seat: int, payload) -> None:
        self.events.put((kind, seat, payload))


@dataclass
class _Row:
    ticket: Ticket
    seat: Seat
    prompt: list[int]
    adapter: str | None
    limit: int
    generator: object
    ids: list[int] = field(default_factory=list)   # generated so far
    kv: dict = field(default_factory=dict)          # layer -> (keys, values), each [kv heads, capacity, head dim]
    length: int = 0                                 # tokens in the buffers
    logits: list | None = None

    @property
    def capacity(self) -> int:
        return len(self.prompt) + self.limit


# --------------------------------------------------------------------------- attention per row

_STEP = threading.local()   # the current forward's plan: [(row, first packed token, tokens)]


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The attention function the loop's forwards run under. query/key/value hold the
    packed tokens of every row ([1, heads, tokens, dim]); each row's new keys and values
    are written into its own buffers and it attends over them alone."""
    plan, layer = _STEP.plan, module.layer_idx
    _STEP.calls += 1
    dtype = query.dtype
    if dtype == torch.bfloat16 and query.device.type == "cpu":
        # bf16 weights make the big products faster on CPUs that compute bf16, but CPU
        # attention in bf16 was slower than in fp32 (measured: 138 against 45 ms a step
        # for 60 rows), so the keys and values are kept, and attended, in fp32.
        query, key, value = query.float(), key.float(), value.float()
    out = query.new_empty(1, query.shape[2], query.shape[1], query.shape[3])
    for row, start, n in plan:
        if layer not in row.kv:
            shape = (key.shape[1], row.capacity, key.shape[3])
            row.kv[layer] = (key.new_empty(shape), value.new_empty(shape))
        keys, values = row.kv[layer]
        end = row.length + n
        keys[:, row.length:end] = key[0, :, start:start + n]
        values[:, row.length:end] = value[0, :, start:start + n]
        # A row's tokens in one step are either its whole prompt (nothing cached yet: plain
        # causal attention) or one new token (it sees everything: no mask).
        o = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:start + n], keys[None, :, :end], values[None, :, :end],
            is_causal=n > 1, scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
        out[0, start:start + n] = o[0].transpose(0, 1)
    return out.to(dtype), None


_REGISTERED = threading.Lock()


def _register() -> None:
    """Make ATTENTION a name transformers' models accept (once, on first use)."""
    from transformers import AttentionInterface
    with _REGISTERED:
        if ATTENTION not in AttentionInterface._global_mapping:
            AttentionInterface.register(ATTENTION, _attention)


@contextlib.contextmanager
def _rows_attention(model, plan):
    """While inside, `model`'s forwards attend per row of `plan` (and say if they did not)."""
    config = model.config
    before = config._attn_implementation
    _STEP.plan, _STEP.calls = plan, 0
    config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before
        _STEP.plan = None


# --------------------------------------------------------------------------- sampling

def sample(logits, samplings: list, generators: list) -> list[int]:
    """The next token of each row: greedy for temperature 0, else temperature and top-p
    (the smallest set of best tokens whose probability reaches p) drawn with the row's own
    generator. Top-p first looks among the TOP_CANDIDATES best tokens, which decide it
    exactly when they hold at least p of the probability (they nearly always do); a row
    whose candidates fall short is sorted in full."""
    logits = logits.float()
    chosen = logits.argmax(-1).tolist()
    hot = [i for i, s in enumerate(samplings) if s.temperature > 0]
    if not hot:
        return chosen
    temps = torch.tensor([samplings[i].temperature for i in hot]).unsqueeze(1)
    tops = torch.tensor([samplings[i].top_p for i in hot]).unsqueeze(1)
    scaled = logits[hot] / temps
    k = min(TOP_CANDIDATES, scaled.shape[-1])
    best, order = scaled.topk(k, dim=-1)
    probs = torch.softmax(scaled, dim=-1).gather(-1, order)
    short = (probs.sum(-1, keepdim=True) < tops).squeeze(1).tolist()
    for j, i in enumerate(hot):
        b, o, p = best[j], order[j], probs[j]
        if short[j]:
            b, o = scaled[j].sort(descending=True)
            p = torch.softmax(b, dim=-1)
        keep = (p.cumsum(-1) - p) < tops[j]    # drop a token once the better ones already reach p
        weights = torch.softmax(b.masked_fill(~keep, float("-inf")), dim=-1)
        chosen[i] = int(o[torch.multinomial(weights, 1, generator=generators[i])])
    return chosen


# --------------------------------------------------------------------------- the loop

class DecodeLoop:
    """The shared decode loop of one model entry. `get_entry()` returns the entry (loading
    it on first use, in the loop's thread); `adapter_of(entry, spec)` turns a seat's adapter
    spec into the PEFT adapter name (loading the adapter); `threads()` is the intra-op
    thread count the loop's thread runs with."""

    def __init__(self, name: str, get_entry: Callable, adapter_of: Callable, threads: Callable[[], int],
                 max_rows: int = 64, share: int | None = None, prefill_tokens: int = 512, idle_s: float = 5.0):
        self.name, self.get_entry, self.adapter_of, self.threads = name, get_entry, adapter_of, threads
        self.max_rows = max(1, int(max_rows))
        self.share = max(1, int(share or max(2, self.max_rows // 4)))
        self.prefill_tokens, self.idle_s = max(1, int(prefill_tokens)), float(idle_s)
        self._cond = threading.Condition()
        self._waiting: list[Ticket] = []   # tickets with seats not admitted yet, in arrival order
        self._admitted: list[tuple[Ticket, Seat]] = []   # admitted, not yet prefilled
        self._rows: list[_Row] = []        # answers under way
        self._thread: threading.Thread | None = None
        self._retired = self._closing = False
        self.steps = 0
        self.peak_rows = 0
        _LOOPS.add(self)

    # ----------------------------------------------------------------------- callers' side

    def submit(self, ticket: Ticket) -> None:
        with self._cond:
            self._waiting.append(ticket)
            self._retired = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name=f"arena-loop {self.name}")
                self._thread.start()
            self._cond.notify()

    def retire(self) -> None:
        """Its model left memory: end the thread now if it is idle (not after idle_s)."""
        with self._cond:
            self._retired = True
            self._cond.notify()

    def close(self, timeout: float = 10.0) -> None:
        """End the loop's thread now (answers under way end with an error), and wait for it:
        a thread left in torch when the interpreter exits aborts the process."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def running(self) -> bool:
        with self._cond:
            return self._thread is not None

    def busy(self) -> bool:
        with self._cond:
            return bool(self._waiting or self._admitted or self._rows)

    def stats(self) -> dict:
        with self._cond:
            return {"rows": len(self._rows), "joining": len(self._admitted),
                    "waiting": sum(len(t.waiting) for t in self._waiting), "running": self._thread is not None,
                    "steps": self.steps, "peak_rows": self.peak_rows}

    # ----------------------------------------------------------------------- the loop's thread

    def _run(self) -> None:
        default = torch.get_num_threads()
        torch.set_num_threads(self.threads())
        entry = None
        try:
            _register()
            while True:
                with self._cond:
                    if self._closing:
                        raise RuntimeError("the arena is shutting down")
                    if not (self._waiting or self._admitted or self._rows):
                        if not (self._retired or self._closing):
                            self._cond.wait(self.idle_s)
                        if not (self._waiting or self._admitted or self._rows):
                            self._thread = None
                            return
                    self._drop_cancelled()
                    self._admit()
                if entry is None:
                    entry = self.get_entry()
                self._step(entry, self._prefills(entry))
        except BaseException as e:  # noqa: BLE001 — any failure ends every answer here with a message, never a hang
            self._fail_all(_one_line(e))
        finally:
            torch.set_num_threads(default)

    def _fail_all(self, message: str) -> None:
        with self._cond:
            for row in self._rows:
                row.ticket.put("error", row.seat.index, message)
            for ticket, seat in self._admitted:
                ticket.put("error", seat.index, message)
            for ticket in self._waiting:
                for seat in ticket.waiting:
                    ticket.put("error", seat.index, message)
            self._rows, self._admitted, self._waiting = [], [], []
            self._thread = None

    def _drop_cancelled(self) -> None:
        """Take out the answers whose caller stopped or went away (under the lock)."""
        for ticket in [t for t in self._waiting if t.cancel.is_set()]:
            for seat in ticket.waiting:
                ticket.put("done", seat.index, None)
            ticket.waiting = []
            self._waiting.remove(ticket)
        for ticket, seat in [(t, s) for t, s in self._admitted if t.cancel.is_set()]:
            self._admitted.remove((ticket, seat))
            ticket.active -= 1
            ticket.put("done", seat.index, None)
        for row in [r for r in self._rows if r.ticket.cancel.is_set()]:
            self._leave(row, None)

    def _leave(self, row: _Row, reason: str | None, kind: str = "done") -> None:
        self._rows.remove(row)
        row.kv = {}   # the buffers go now, not when the ticket does
        row.ticket.active -= 1
        row.ticket.put(kind, row.seat.index, reason)

    def _admit(self) -> None:
        """Seat waiting answers in arrival order while there is room; a ticket at its share
        lets the others pass while anyone is waiting. Tell the rest their place in line."""
        free = self.max_rows - len(self._rows) - len(self._admitted)
        crowded = len(self._waiting) > 1
        for ticket in list(self._waiting):
            while free > 0 and ticket.waiting and not (crowded and ticket.active >= self.share):
                self._admitted.append((ticket, ticket.waiting.pop(0)))
                ticket.active += 1
                free -= 1
            if not ticket.waiting:
                self._waiting.remove(ticket)
                ticket.place = None
        for place, ticket in enumerate(self._waiting, start=1):
            if ticket.active == 0 and ticket.place != place:
                ticket.place = place
                ticket.put("queued", [seat.index for seat in ticket.waiting], place)

    def _prefills(self, entry) -> list[_Row]:
        """Rows for the admitted answers whose prompts this step prefills: in order, up to
        `prefill_tokens` prompt tokens (always at least one answer)."""
        rows, budget = [], self.prefill_tokens
        while budget > 0:
            with self._cond:
                if not self._admitted:
                    break
                ticket, seat = self._admitted.pop(0)
            row = self._join(entry, ticket, seat)
            if row is not None:
                rows.append(row)
                budget -= len(row.prompt)
        return rows

    def _join(self, entry, ticket: Ticket, seat: Seat) -> _Row | None:
        """A row for the seat: its adapter loaded, its prompt tokenized. A failure here
        (a broken adapter, say) ends this answer alone."""
        try:
            tok = entry.tokenizer
            ticket.tokenizer = tok
            req = seat.request
            adapter = self.adapter_of(entry, seat.adapter)
            text = tok.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
            prompt = tok(text, add_special_tokens=False)["input_ids"]
            if not prompt:
                raise ValueError("the conversation is empty")
            generator = torch.Generator().manual_seed(int(req.sampling.seed))
            row = _Row(ticket, seat, list(prompt), adapter, int(req.sampling.max_new_tokens), generator,
                       logits=[] if ticket.record else None)
        except Exception as e:  # noqa: BLE001
            with self._cond:
                ticket.active -= 1
            ticket.put("error", seat.index, _one_line(e))
            return None
        ticket.rows.append(row)
        return row

    def _step(self, entry, joining: list[_Row]) -> None:
        """One forward over every row under way plus the joining prompts; sample, stream, end."""
        rows = self._rows + joining
        if not rows:
            return
        try:
            logits = self._forward(entry, rows)
        except Exception as e:  # noqa: BLE001
            if not joining:
                raise
            # Blame the newcomers first (an adapter that loads but cannot run, say): the
            # answers under way go on without them.
            message = _one_line(e)
            for row in joining:
                row.ticket.put("error", row.seat.index, message)
                with self._cond:
                    row.ticket.active -= 1
            return
        for row, n in zip(rows, [1 if r.length else len(r.prompt) for r in rows]):
            row.length += n
        with self._cond:
            self._rows.extend(joining)
            self.steps += 1
            self.peak_rows = max(self.peak_rows, len(self._rows))
        if any(r.logits is not None for r in rows):
            for row, lg in zip(rows, logits):
                if row.logits is not None:
                    row.logits.append(lg.float().clone())
        tokens = sample(logits, [r.seat.request.sampling for r in rows], [r.generator for r in rows])
        eos = entry.eos
        with self._cond:
            for row, token in zip(rows, tokens):
                if row not in self._rows:   # cancelled while the step ran: already told
                    continue
                if token in eos:
                    self._leave(row, None)
                    continue
                row.ids.append(token)
                row.ticket.put("token", row.seat.index, token)
                if len(row.ids) >= row.limit:
                    self._leave(row, "length")

    def _forward(self, entry, rows: list[_Row]):
        """The logits of each row's next token: one packed forward (per adapter group when
        the adapters cannot share one, see decoding.row_adapters)."""
        plan, ids, positions, last = [], [], [], []
        for row in rows:
            new = [row.ids[-1]] if row.length else row.prompt
            plan.append((row, len(ids), len(new)))
            positions.extend(range(row.length, row.length + len(new)))
            ids.extend(new)
            last.append(len(ids) - 1)
        model = entry.model
        device = next(model.parameters()).device
        names = [r.adapter for r in rows]
        with entry.lock, torch.inference_mode():
            if not entry.adapters:
                return self._packed(model, plan, ids, positions, last, device)
            tokens = [n for (row, _, k) in plan for n in [row.adapter] * k]
            with row_adapters(model, tokens, PEFT_BASE, packed=True) as by_mask:
                if by_mask:
                    return self._packed(model, plan, ids, positions, last, device)
            # Variants PEFT must run itself (DoRA, ...): one packed forward per adapter.
            out = [None] * len(rows)
            for name in dict.fromkeys(names):
                part = [i for i, n in enumerate(names) if n == name]
                sub_plan, sub_ids, sub_pos, sub_last = [], [], [], []
                for i in part:
                    row, start, n = plan[i]
                    sub_plan.append((row, len(sub_ids), n))
                    sub_ids.extend(ids[start:start + n])
                    sub_pos.extend(positions[start:start + n])
                    sub_last.append(len(sub_ids) - 1)
                got = self._packed(model, sub_plan, sub_ids, sub_pos, sub_last, device, adapter_names=[name])
                for i, lg in zip(part, got):
                    out[i] = lg
            return torch.stack(out)

    @staticmethod
    def _packed(model, plan, ids, positions, last, device, **kw):
        with _rows_attention(model, plan):
            out = model(input_ids=torch.tensor([ids], device=device),
                        position_ids=torch.tensor([positions], device=device),
                        logits_to_keep=torch.tensor(last, device=device), use_cache=False, **kw)
            layers = model.config.num_hidden_layers
            if _STEP.calls != layers:
                raise RuntimeError(f"{type(model).__name__} does not run its attention through transformers' "
                                   f"attention interface ({_STEP.calls} of {layers} layers did), so the arena "
                                   "cannot share decode steps for it")
        return out.logits[0]


_LOOPS: "weakref.WeakSet[DecodeLoop]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for loop in list(_LOOPS):
        loop.close()


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()
