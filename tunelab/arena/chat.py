"""Generation for the arena: the base model and every tuned run, side by side, streaming.

    arena = Arena("smollm2-135m-instruct")
    arena.choices()       # [("base · smollm2-135m-instruct", "base"), ("20261128-lora-pirate (lora)", "run:...")]
    for replies in arena.stream([Request("base", msgs, s), Request("run:20261128-lora-pirate", msgs, s)]):
        print(replies[0].text, "|", replies[1].text)     # both grow token by token

One copy of the base weights serves the base model and every adapter trained on it:
the adapters are loaded into one PEFT model under their own names, and a request for
the base runs the same layers with the adapters off (PEFT's "__base__"). Every model in
memory has ONE decode loop (tunelab/arena/loop.py) that all users share: a request joins
it at the next step, each answer with its own adapter, temperature, top-p, seed and
token limit, and leaves when it ends, so thirty users' panes cost about one forward pass
per token, not sixty. A fully fine-tuned run is its own model with its own loop; those
are kept in a small least-recently-used cache (`max_models`).

A failure in one side's generation becomes that side's `error`; the other side is
unaffected, and nothing is left holding a model lock.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..common.decoding import ANSWER_TOKENS
from ..modelio import loading
from ..training import runs
from ..training.config import RunConfig
from .chatdevice import ThreadTuner, default_threads, chat_dtype, generation_threads, threads_fixed
from .decoding import PEFT_BASE, fast_small_batches
from .entry import Entry, adapter_of
from . import endpoints, packed
from .loop import DecodeLoop, Seat, Ticket, one_line
from ..training.runfolder import MODEL_DIR

BASE = "base"           # the source key of the arena's base model (no adapter)
RUN_PREFIX = "run:"     # "run:<run_id>" is a finished run's model


def run_settings(run_id: str, labels_db: str | Path | None = None) -> dict | None:
    """How run `run_id` was last used in the arena: the sampling settings and system prompt of
    the newest label on one of its answers, with "labelled" (when); None where no label comes
    from it or the label store cannot be read. A GGUF export writes them into its Modelfile."""
    from .prefs import LabelStore
    try:
        return LabelStore(labels_db).last_settings(RUN_PREFIX + run_id)
    except Exception:   # no label store yet, or one this version cannot read
        return None


@dataclass
class Sampling:
    """How one side samples. temperature 0 = greedy (always the most likely token)."""
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = ANSWER_TOKENS
    seed: int = 0

    def check(self) -> "Sampling":
        if not (0.0 <= self.temperature <= 5.0):
            raise ValueError(f"temperature: must be between 0 and 5 (got {self.temperature})")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p: must be in (0, 1] (got {self.top_p})")
        if not (1 <= int(self.max_new_tokens) <= 2048):
            raise ValueError(f"max_new_tokens: must be between 1 and 2048 (got {self.max_new_tokens})")
        return self

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": int(self.max_new_tokens),
                "seed": int(self.seed)}


@dataclass
class Request:
    source: str                    # BASE, "run:<run_id>" or "endpoint:<name>"
    messages: list[dict]           # the conversation so far, ending with the user's turn
    sampling: Sampling = field(default_factory=Sampling)


@dataclass
class Reply:
    text: str = ""
    done: bool = False
    error: str | None = None
    tokens: int = 0
    first_token_s: float | None = None   # time to first token, from the start of the request
    seconds: float | None = None         # total time, once done
    cut: bool = False                    # max_new_tokens ended it, not the model: it may stop mid-word
    queued: int | None = None            # its place in line while the model's loop is full
    provenance: dict = field(default_factory=dict)   # where it came from, beyond the source key (an endpoint's URL)

    @property
    def tokens_per_s(self) -> float | None:
        if not self.seconds or not self.tokens:
            return None
        return self.tokens / self.seconds


class ChatError(ValueError):
    """A source that cannot be chatted with; the message says why."""


# --------------------------------------------------------------------------- what can be picked

def run_source(run_id: str) -> dict:
    """What a finished run offers the arena: its saved model and how to load it."""
    run_dir = runs.find_run(run_id)
    model_dir = run_dir / MODEL_DIR
    if not model_dir.is_dir():
        status = runs.run_status(run_dir).get("status")
        raise ChatError(f"{run_dir.name} has no saved model (status: {status}); pick a finished run")
    cfg = RunConfig.from_yaml(run_dir / "config.yaml")
    adapter = (model_dir / "adapter_config.json").is_file()
    on_4bit = adapter and cfg.weights == "qlora"
    return {"run_id": run_dir.name, "method": cfg.method, "base": cfg.model, "path": model_dir,
            "kind": "adapter" if adapter else "full",
            # A QLoRA adapter answers on the 4-bit base it was trained on, not on the full one.
            "quant": {"quant_type": cfg.qlora.quant_type, "double_quant": cfg.qlora.double_quant} if on_4bit else None}


def sources(base_model: str) -> list[tuple[str, str]]:
    """(label, key) for the base model, every run with a saved model (newest first), and
    every endpoint added to the workspace (endpoints.py)."""
    out = [(source_label(BASE, base_model), BASE)]
    for r in runs.list_runs():
        if (Path(r["path"]) / MODEL_DIR).is_dir() and r["status"] in ("finished", "stopped"):
            method = r["method"] or "?"
            out.append((f"{r['run_id']} ({method})", RUN_PREFIX + r["run_id"]))
    return out + endpoints.choices()


def source_label(key: str, base_model: str) -> str:
    if key == BASE:
        return f"base · {Path(base_model).name}"
    if key.startswith(endpoints.PREFIX):
        return f"{key[len(endpoints.PREFIX):]} (endpoint)"
    return key[len(RUN_PREFIX):] if key.startswith(RUN_PREFIX) else key


# --------------------------------------------------------------------------- the model pool

class Arena:
    """The arena's models: one shared base for every adapter, plus a bounded cache of
    fully fine-tuned models, each with the decode loop every user shares. Thread-safe.

    max_rows (TUNELAB_ARENA_MAX_ROWS, default 64): answers one loop writes at once; more
    wait in line. idle_s (TUNELAB_ARENA_IDLE_S, default 5): a loop's thread ends after
    this long with nothing to do. cache_mb (TUNELAB_ARENA_CACHE_MB, default 1024): the
    keys and values each loop keeps of finished answers, so a conversation's next turn
    computes only its new tokens (tunelab/arena/prefix.py); 0 turns it off."""

    def __init__(self, base_model: str, max_models: int | None = None, device: str = "cpu",
                 max_rows: int | None = None, idle_s: float | None = None, cache_mb: float | None = None):
        env = os.environ.get
        self.base_model = base_model
        self.device = device
        self.max_models = max(1, int(max_models or env("TUNELAB_ARENA_MAX_MODELS", "3")))
        self.max_rows = max(1, int(max_rows or env("TUNELAB_ARENA_MAX_ROWS") or 64))
        self.idle_s = float(idle_s if idle_s is not None else env("TUNELAB_ARENA_IDLE_S") or 5.0)
        self.cache_mb = float(cache_mb if cache_mb is not None else env("TUNELAB_ARENA_CACHE_MB") or 1024)
        default_threads()   # the process's thread count, read before anything changes it
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._loops: dict[str, DecodeLoop] = {}
        self._lock = threading.Lock()

    def choices(self) -> list[tuple[str, str]]:
        return sources(self.base_model)

    def loaded(self) -> list[str]:
        """What is in memory now, least recently used first (for the UI and the tests)."""
        with self._lock:
            return list(self._entries)

    def _entry(self, key: str, load) -> Entry:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
        entry = Entry(*load())  # outside the pool lock: loading takes seconds
        with self._lock:
            entry = self._entries.setdefault(key, entry)
            self._entries.move_to_end(key)
        self._trim()
        return entry

    def _trim(self) -> None:
        """Evict the least recently used models beyond `max_models` that nobody is
        generating with (a model in use is let go when its answers end)."""
        with self._lock:
            for old in list(self._entries)[:-1]:
                if len(self._entries) <= self.max_models:
                    break
                loop = self._loops.get(old)
                if not (loop and loop.busy()) and not self._entries[old].lock.locked():
                    del self._entries[old]
                    if loop:
                        loop.retire()
                        del self._loops[old]

    def _loop(self, key: str, load: Callable) -> DecodeLoop:
        """The decode loop of a model key (made on first use; call under self._lock)."""
        loop = self._loops.get(key)
        if loop is None:
            loop = self._loops[key] = DecodeLoop(
                key, functools.partial(self._entry, key, load), adapter_of,
                # every core for one loop, one each when several models generate at once
                threads=lambda: generation_threads(sum(lp.running() for lp in list(self._loops.values()))),
                max_rows=self.max_rows, idle_s=self.idle_s, cache_bytes=int(self.cache_mb * 2**20),
                tuner=None if threads_fixed() else ThreadTuner())
        return loop

    def loaded_entry(self, key: str) -> Entry | None:
        """The model in memory under `key` (None if it is not), without loading it or
        changing its place in the eviction order (for the tests and the benchmarks)."""
        with self._lock:
            return self._entries.get(key)

    def loop_of(self, key: str) -> DecodeLoop | None:
        """The decode loop of a model key, if one was made (for the tests and the benchmarks)."""
        with self._lock:
            return self._loops.get(key)

    def loop_stats(self) -> dict[str, dict]:
        """Each model's loop: answers under way, waiting, steps so far (for the UI and the tests)."""
        with self._lock:
            return {key: loop.stats() for key, loop in self._loops.items()}

    def load_base(self, name: str, quant: dict | None = None):
        """The base model for the arena; with `quant`, its Linear layers in 4 bits as a
        QLoRA run's frozen base (a separate entry: the full base stays for the others)."""
        dtype = chat_dtype(self.device)
        model = loading.load_model(name, dtype=dtype, device=self.device, attn_implementation=packed.register(),
                                   quant=quant and {**quant, "compute_dtype": dtype})
        return fast_small_batches(model), loading.load_tokenizer(name)

    def locate(self, source: str) -> tuple[str, Callable, tuple | str | None, dict]:
        """(model key, loader, adapter spec, provenance) for a source key, without loading
        anything. The spec is (run_id, adapter folder) for an adapter run, PEFT_BASE for
        the base model and None for a full model. Raises ChatError for an unknown source."""
        if source == BASE:
            return ("base:" + self.base_model, lambda: self.load_base(self.base_model), PEFT_BASE,
                    {"model": BASE, "base": self.base_model})
        if source.startswith(endpoints.PREFIX):
            raise ChatError(f"{source!r} is served elsewhere: it has no model here")
        if not source.startswith(RUN_PREFIX):
            raise ChatError(f"unknown model {source!r}: pick 'base', a run or an endpoint")
        src = run_source(source[len(RUN_PREFIX):])
        prov = {"model": source, "run_id": src["run_id"], "method": src["method"], "base": src["base"]}
        if src["kind"] == "full":
            path = str(src["path"])
            return ("full:" + src["run_id"], lambda: (
                fast_small_batches(loading.load_model(path, dtype=chat_dtype(self.device), device=self.device,
                                                      attn_implementation=packed.register())),
                loading.load_tokenizer(path)), None, prov)
        if src["quant"]:
            q = src["quant"]
            prov["base_quant"] = q["quant_type"]
            return (f"{q['quant_type']}{'+dq' if q['double_quant'] else ''}:{src['base']}",
                    lambda: self.load_base(src["base"], q), (src["run_id"], src["path"]), prov)
        return ("base:" + src["base"], lambda: self.load_base(src["base"]), (src["run_id"], src["path"]), prov)

    def resolve(self, source: str) -> tuple[Entry, tuple | str | None, dict]:
        """(model entry, adapter spec, provenance) for a source key, loading the model if
        it is not in memory; adapters are loaded into the entry under its lock, at generation."""
        key, load, spec, prov = self.locate(source)
        return self._entry(key, load), spec, prov

    # ----------------------------------------------------------------------- generation

    def submit(self, requests: list[Request], cancel: threading.Event, events: queue.Queue,
               record: bool = False) -> tuple[list[Reply], list[Ticket]]:
        """Hand every request to its model's loop; events go to `events`. Returns the
        replies so far (a bad request is done with its error already) and the tickets."""
        replies = [Reply() for _ in requests]
        groups: dict[str, tuple[Callable, list[Seat]]] = {}
        remote = []
        for i, req in enumerate(requests):
            try:
                req.sampling.check()
                if req.source.startswith(endpoints.PREFIX):   # served elsewhere: a thread streams it
                    store = endpoints.EndpointStore()
                    ep = store.get(req.source[len(endpoints.PREFIX):])
                    remote.append((i, ep, store.key_for(ep), req))
                    replies[i].provenance = ep.provenance()
                    continue
                key, load, adapter, _ = self.locate(req.source)
            except Exception as e:  # a missing run, a bad setting: this side only
                replies[i] = Reply(done=True, error=one_line(e))
                continue
            groups.setdefault(key, (load, []))[1].append(Seat(i, req, adapter))
        tickets: list = [Remote(i, ep, key, req, events, cancel) for i, ep, key, req in remote]
        with self._lock:   # with the loop lookup, so a trim cannot retire a loop in between
            for key, (load, seats) in groups.items():
                ticket = Ticket(events, cancel, seats, record=record)
                ticket.loop = self._loop(key, load)
                ticket.loop.submit(ticket)
                tickets.append(ticket)
        return replies, tickets

    def stream(self, requests: list[Request], cancel: threading.Event | None = None,
               timeout_s: float = 600.0) -> Iterator[list[Reply]]:
        """Generate every request at once; yield the list of replies each time any grows.

        Each request joins its model's shared loop (requests on one base, with or without
        adapters, share its steps). The last yield has every reply `done`."""
        cancel = cancel or threading.Event()
        events: queue.Queue = queue.Queue()
        start = time.perf_counter()
        replies, tickets = self.submit(requests, cancel, events)
        owner = {seat.index: t for t in tickets for seat in t.seats}
        ids: dict[int, list[int]] = {i: [] for i in owner}
        yield [Reply(**r.__dict__) for r in replies]
        deadline = start + timeout_s
        try:
            while not all(r.done for r in replies):
                try:
                    pending = [events.get(timeout=0.25)]
                except queue.Empty:
                    if time.perf_counter() > deadline:
                        cancel.set()
                    if not any(t.running() for t in tickets):
                        for r in replies:   # the loop ended without saying so (it always says)
                            if not r.done:
                                r.done, r.error = True, r.error or "generation ended unexpectedly"
                        break
                    continue
                # Take every event already waiting, then yield once: one wake-up a decode
                # step, not one a token, so this thread disturbs the loop's less.
                while True:
                    try:
                        pending.append(events.get_nowait())
                    except queue.Empty:
                        break
                now = time.perf_counter() - start
                grown = set()
                for kind, row, payload in pending:
                    if kind == "queued":
                        for i in row:
                            replies[i].queued = payload
                        continue
                    r = replies[row]
                    if kind in ("token", "text"):
                        if kind == "token":
                            ids[row].append(payload)
                            grown.add(row)
                        else:   # an endpoint's streamed piece: about one token each
                            r.text += payload
                        r.tokens, r.queued = r.tokens + 1, None
                        r.first_token_s = r.first_token_s if r.first_token_s is not None else now
                    elif kind == "done":
                        r.done, r.seconds, r.cut, r.queued = True, now, payload == "length", None
                    elif kind == "error":
                        r.done, r.error, r.seconds, r.queued = True, payload, now, None
                for row in grown:
                    replies[row].text = owner[row].tokenizer.decode(ids[row], skip_special_tokens=True)
                yield [Reply(**x.__dict__) for x in replies]
        finally:
            cancel.set()  # a closed generator (the page went away) takes its rows out of the loop
            self._trim()


class Remote:
    """One pane answered by an endpoint (endpoints.py): the thread streaming it into the
    caller's events, as a loop's ticket streams a local answer."""

    def __init__(self, index: int, ep: endpoints.Endpoint, key: str | None, req: Request,
                 events: queue.Queue, cancel: threading.Event):
        self.seats = [Seat(index, req, None)]
        self.thread = endpoints.serve_thread(ep, key, index, req.messages, req.sampling.to_dict(),
                                             lambda kind, row, payload: events.put((kind, row, payload)),
                                             cancel.is_set)

    def running(self) -> bool:
        return self.thread.is_alive()


def blind_order(rng) -> bool:
    """True when the two candidates swap sides (a fair coin per pair, from `rng`), so
    which model is "A" tells an annotator nothing."""
    return rng.random() < 0.5
