"""One decode loop per model in memory, shared by every user of the arena (continuous batching).

    loop = DecodeLoop("base:smollm2", get_entry, adapter_of, threads)
    loop.submit(Ticket(events, cancel, [Seat(0, request, "__base__"), Seat(1, request, ("run-id", path))]))
    # events then carries ("token", seat, id), ("done", seat, reason), ("error", seat, message)
    # and ("queued", [seats], place in line)

Each step of the loop is ONE forward pass over every answer being written, whoever asked
for it: the answers already under way give one token each, and answers that have just
joined give their whole prompt (their prefill). The tokens are packed into one sequence
(tunelab/arena/packed.py), so every weight is read once per step however many users there
are; attention is the one part computed per answer, each against its own key/value
buffer. So an answer can join
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
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

from ..common import cpushare
from . import packed
from .decoding import PEFT_BASE, row_adapters
from .prefix import PrefixCache


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
        self.rows: list[_Row] = []  # with `record`, every row made for it (the tests read their logits)
        self.loop: DecodeLoop | None = None

    def put(self, kind: str, seat: int, payload) -> None:
        self.events.put((kind, seat, payload))

    def running(self) -> bool:
        """Whether its loop's thread is still at work (a caller waiting on its events asks)."""
        return self.loop is not None and self.loop.running()


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
    prefix: dict | None = None                      # kept keys/values of prompt[:length] to start from
    kv_dtype: object = None                         # the model's precision of keys and values

    @property
    def capacity(self) -> int:
        return len(self.prompt) + self.limit

    @property
    def new_tokens(self) -> list[int]:
        """What this row feeds the next forward: its prompt (after any kept prefix), then
        each token it chose."""
        return self.prompt[self.length:] if self.length < len(self.prompt) else [self.ids[-1]]

    @property
    def tokens(self) -> list[int]:
        """The tokens whose keys and values are in the buffers."""
        return (self.prompt + self.ids)[:self.length]


# --------------------------------------------------------------------------- the loop

class DecodeLoop:
    """The shared decode loop of one model entry. `get_entry()` returns the entry (loading
    it on first use, in the loop's thread); `adapter_of(entry, spec)` turns a seat's adapter
    spec into the PEFT adapter name (loading the adapter); `threads()` is the most
    intra-op threads the loop's thread may use, and `tuner` (a chatdevice.ThreadTuner)
    picks, step by step, between that and one thread by measuring the steps."""

    def __init__(self, name: str, get_entry: Callable, adapter_of: Callable, threads: Callable[[], int],
                 max_rows: int = 64, share: int | None = None, prefill_tokens: int = 512, idle_s: float = 5.0,
                 cache_bytes: int = 1 << 30, tuner=None):
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
        self.prefilled = 0                 # prompt tokens computed (the cache's reuse is in cache.stats())
        self.cache = PrefixCache(cache_bytes)
        self.tuner = tuner                 # a chatdevice.ThreadTuner, or None: always threads()
        self._cache_of = None              # the entry the cache's keys and values came from
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

    def thread(self) -> threading.Thread | None:
        """The loop's thread while it runs (None when it has stopped)."""
        with self._cond:
            return self._thread

    def busy(self) -> bool:
        with self._cond:
            return bool(self._waiting or self._admitted or self._rows)

    def stats(self) -> dict:
        with self._cond:
            return {"rows": len(self._rows), "joining": len(self._admitted),
                    "waiting": sum(len(t.waiting) for t in self._waiting), "running": self._thread is not None,
                    "steps": self.steps, "peak_rows": self.peak_rows, "prefilled": self.prefilled,
                    "cache": self.cache.stats(), **(self.tuner.stats() if self.tuner else {})}

    # ----------------------------------------------------------------------- the loop's thread

    def _run(self) -> None:
        import torch
        default = torch.get_num_threads()
        threads = None
        entry = None
        try:
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
                most = self.threads()
                n = self.tuner.choose(most) if self.tuner else most
                if n != threads:
                    torch.set_num_threads(n)
                    threads = n
                if entry is None:
                    entry = self.get_entry()
                    if self._cache_of is None or self._cache_of() is not entry:   # a reloaded model
                        self.cache.clear()
                        self._cache_of = weakref.ref(entry)
                joining = self._prefills(entry)
                answers = len(self._rows) + len(joining)
                cpushare.mark_chat()   # a run training beside the arena keeps to its share of the cores
                t0 = time.perf_counter()
                self._step(entry, joining)
                if self.tuner:
                    self.tuner.record(n, time.perf_counter() - t0, answers, bool(joining))
        except BaseException as e:  # noqa: BLE001 — any failure ends every answer here with a message, never a hang
            self._fail_all(one_line(e))
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

    def _leave(self, row: _Row, reason: str | None) -> None:
        """The row is done (its end, its limit, its user's Stop): keep its keys and values
        for the conversation's next turn, and free its slot."""
        self._rows.remove(row)
        self.cache.put(row.adapter, row.tokens, row.kv, row.kv_dtype)
        row.kv = {}   # the buffers go now, not when the ticket does
        row.ticket.active -= 1
        row.ticket.put("done", row.seat.index, reason)

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
                budget -= len(row.new_tokens)
        return rows

    def _join(self, entry, ticket: Ticket, seat: Seat) -> _Row | None:
        """A row for the seat: its adapter loaded, its prompt tokenized. A failure here
        (a broken adapter, say) ends this answer alone."""
        import torch
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
            row.length, row.prefix = self.cache.match(adapter, row.prompt)   # an earlier turn's keys and values
        except Exception as e:  # noqa: BLE001
            with self._cond:
                ticket.active -= 1
            ticket.put("error", seat.index, one_line(e))
            return None
        if ticket.record:
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
            message = one_line(e)
            for row in joining:
                row.ticket.put("error", row.seat.index, message)
                with self._cond:
                    row.ticket.active -= 1
            return
        for row in joining:
            self.prefilled += len(row.new_tokens)
            row.prefix = None
        for row in rows:
            row.length += len(row.new_tokens)
        with self._cond:
            self._rows.extend(joining)
            self.steps += 1
            self.peak_rows = max(self.peak_rows, len(self._rows))
        if any(r.logits is not None for r in rows):
            for row, lg in zip(rows, logits):
                if row.logits is not None:
                    row.logits.append(lg.float().clone())
        tokens = packed.sample(logits, [r.seat.request.sampling for r in rows], [r.generator for r in rows])
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
        """The logits of each row's next token: one packed forward (one per adapter when
        the adapters cannot share one, see decoding.row_adapters)."""
        import torch
        model = entry.model
        with entry.lock, torch.inference_mode():
            if not entry.adapters:
                return packed.forward(model, rows)
            tokens = [row.adapter for row in rows for _ in row.new_tokens]
            with row_adapters(model, tokens, PEFT_BASE, packed=True) as by_mask:
                if by_mask:
                    return packed.forward(model, rows)
            # Variants PEFT must run itself (DoRA, ...): one packed forward per adapter.
            names = [r.adapter for r in rows]
            out = [None] * len(rows)
            for name in dict.fromkeys(names):
                part = [i for i, n in enumerate(names) if n == name]
                for i, logits in zip(part, packed.forward(model, [rows[i] for i in part], adapter_names=[name])):
                    out[i] = logits
            return torch.stack(out)


_LOOPS: "weakref.WeakSet[DecodeLoop]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for loop in list(_LOOPS):
        loop.close()


def one_line(e: BaseException) -> str:
    """An exception as the one line a pane shows: its type and the first line of its text."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()
