"""Generation for the arena: the base model and every tuned run, side by side, streaming.

    arena = Arena("smollm2-135m-instruct")
    arena.choices()       # [("base · smollm2-135m-instruct", "base"), ("20261128-lora-pirate (lora)", "run:...")]
    for replies in arena.stream([Request("base", msgs, s), Request("run:20261128-lora-pirate", msgs, s)]):
        print(replies[0].text, "|", replies[1].text)     # both grow token by token

One copy of the base weights serves the base model and every adapter trained on it:
the adapters are loaded into one PEFT model under their own names, and a request for
the base runs the same layers with the adapters off (PEFT's "__base__"). Requests on
the same base go into ONE batched `generate` call, each row with its own adapter
(`adapter_names=[...]`) and its own temperature/top-p, so two panes cost about one
forward pass per token instead of two. A fully fine-tuned run is its own model; those
are kept in a small least-recently-used cache (`max_models`) and run in a thread of
their own beside the others.

A failure in one side's generation becomes that side's `error`; the other side is
unaffected, and nothing is left holding a model lock.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..common.lazy import lazy

torch = lazy("torch")  # imported on first use (see common/lazy.py)

from ..modelio import loading, models
from ..training import runs
from ..training.config import RunConfig
from .chatdevice import _default_threads, chat_dtype, generation_threads
from .decoding import Cancelled, RowSampler, RowStreamer, eos_ids, fast_small_batches, row_adapters
from ..training.runfolder import MODEL_DIR

BASE = "base"           # the source key of the arena's base model (no adapter)
RUN_PREFIX = "run:"     # "run:<run_id>" is a finished run's model
PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


# The decoding every comparison of base and tuned starts from (the arena's defaults, the labs'
# checks, the Inside tab's token shift): SmolLM2's recommended sampling (its model card:
# temperature 0.2, top-p 0.9) with a fixed seed. Greedy decoding loops on a small base ("Boil an
# egg: Boil an egg: ..."), and the tuning would get the credit for a decoder that stops looping.
FAIR_SAMPLING = {"temperature": 0.2, "top_p": 0.9, "seed": 0}


@dataclass
class Sampling:
    """How one side samples. temperature 0 = greedy (always the most likely token)."""
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 128
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
    source: str                    # BASE or "run:<run_id>"
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
    on_4bit = adapter and (cfg.method == "qlora" or (cfg.method == "dpo" and cfg.dpo.adapter == "qlora"))
    return {"run_id": run_dir.name, "method": cfg.method, "base": cfg.model, "path": model_dir,
            "kind": "adapter" if adapter else "full",
            # A QLoRA adapter answers on the 4-bit base it was trained on, not on the full one.
            "quant": {"quant_type": cfg.qlora.quant_type, "double_quant": cfg.qlora.double_quant} if on_4bit else None}


def sources(base_model: str) -> list[tuple[str, str]]:
    """(label, key) for the base model and every run with a saved model, newest first."""
    out = [(source_label(BASE, base_model), BASE)]
    for r in runs.list_runs():
        if (Path(r["path"]) / MODEL_DIR).is_dir() and r["status"] in ("finished", "stopped"):
            method = r["method"] or "?"
            out.append((f"{r['run_id']} ({method})", RUN_PREFIX + r["run_id"]))
    return out


def source_label(key: str, base_model: str) -> str:
    if key == BASE:
        return f"base · {Path(base_model).name}"
    return key[len(RUN_PREFIX):] if key.startswith(RUN_PREFIX) else key


# --------------------------------------------------------------------------- the model pool

class _Entry:
    """One model in memory: a base (with any adapters loaded into it) or a full run."""

    def __init__(self, model, tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.adapters: dict[str, str] = {}   # run_id -> adapter name inside the PEFT model
        self.lock = threading.Lock()         # one generate at a time per model

    def adapter_name(self, run_id: str, path: Path) -> str:
        """Load the run's adapter into this base once; return its PEFT name."""
        if run_id in self.adapters:
            return self.adapters[run_id]
        from peft import PeftModel
        name = f"a{len(self.adapters)}"  # PEFT names are module keys: keep them plain
        models.check_adapter(path)
        with loading.BUILD_LOCK:   # see loading.BUILD_LOCK
            if not self.adapters:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name,
                                                       is_trainable=False)
            else:
                self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        self.model.eval()
        self.adapters[run_id] = name
        return name


class Arena:
    """The arena's models: one shared base for every adapter, plus a bounded cache of
    fully fine-tuned models. Thread-safe; every generate holds its model's lock."""

    def __init__(self, base_model: str, max_models: int | None = None, device: str = "cpu"):
        self.base_model = base_model
        self.device = device
        self.max_models = max(1, int(max_models or os.environ.get("TUNELAB_ARENA_MAX_MODELS", "3")))
        _default_threads()   # the process's thread count, read before anything changes it
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def choices(self) -> list[tuple[str, str]]:
        return sources(self.base_model)

    def loaded(self) -> list[str]:
        """What is in memory now, least recently used first (for the UI and the tests)."""
        with self._lock:
            return list(self._entries)

    def _entry(self, key: str, load) -> _Entry:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
        entry = _Entry(*load())  # outside the pool lock: loading takes seconds
        with self._lock:
            entry = self._entries.setdefault(key, entry)
            self._entries.move_to_end(key)
        self._trim()
        return entry

    def _trim(self) -> None:
        """Evict the least recently used models beyond `max_models` that nobody is
        generating with (a model in use is let go when its generation ends)."""
        with self._lock:
            for old in list(self._entries)[:-1]:
                if len(self._entries) <= self.max_models:
                    break
                if not self._entries[old].lock.locked():
                    del self._entries[old]

    def _load_base(self, name: str, quant: dict | None = None):
        """The base model for the arena; with `quant`, its Linear layers in 4 bits as a
        QLoRA run's frozen base (a separate entry: the full base stays for the others)."""
        dtype = chat_dtype(self.device)
        model = loading.load_model(name, dtype=dtype, device=self.device,
                                   quant=quant and {**quant, "compute_dtype": dtype})
        return fast_small_batches(model), loading.load_tokenizer(name)

    def locate(self, source: str) -> tuple[str, Callable, tuple | str | None, dict]:
        """(model key, loader, adapter spec, provenance) for a source key, without loading
        anything. The spec is (run_id, adapter folder) for an adapter run, PEFT_BASE for
        the base model and None for a full model. Raises ChatError for an unknown source."""
        if source == BASE:
            return ("base:" + self.base_model, lambda: self._load_base(self.base_model), PEFT_BASE,
                    {"model": BASE, "base": self.base_model})
        if not source.startswith(RUN_PREFIX):
            raise ChatError(f"unknown model {source!r}: pick 'base' or a run")
        src = run_source(source[len(RUN_PREFIX):])
        prov = {"model": source, "run_id": src["run_id"], "method": src["method"], "base": src["base"]}
        if src["kind"] == "full":
            path = str(src["path"])
            return ("full:" + src["run_id"], lambda: (
                fast_small_batches(loading.load_model(path, dtype=chat_dtype(self.device), device=self.device)),
                loading.load_tokenizer(path)), None, prov)
        if src["quant"]:
            q = src["quant"]
            prov["base_quant"] = q["quant_type"]
            return (f"{q['quant_type']}{'+dq' if q['double_quant'] else ''}:{src['base']}",
                    lambda: self._load_base(src["base"], q), (src["run_id"], src["path"]), prov)
        return ("base:" + src["base"], lambda: self._load_base(src["base"]), (src["run_id"], src["path"]), prov)

    def resolve(self, source: str) -> tuple[_Entry, tuple | str | None, dict]:
        """(model entry, adapter spec, provenance) for a source key, loading the model if
        it is not in memory; adapters are loaded into the entry under its lock, at generation."""
        key, load, spec, prov = self.locate(source)
        return self._entry(key, load), spec, prov

    # ----------------------------------------------------------------------- generation

    def stream(self, requests: list[Request], cancel: threading.Event | None = None,
               timeout_s: float = 600.0) -> Iterator[list[Reply]]:
        """Generate every request at once; yield the list of replies each time any grows.

        Requests on the same model entry share one batched generate; different entries
        run in parallel threads. The last yield has every reply `done`."""
        cancel = cancel or threading.Event()
        replies = [Reply() for _ in requests]
        events: queue.Queue = queue.Queue()
        groups: dict[str, tuple[Callable, list[int], list]] = {}
        for i, req in enumerate(requests):
            try:
                req.sampling.check()
                key, load, adapter, _ = self.locate(req.source)
            except Exception as e:  # a missing run, a bad setting: this side only
                replies[i] = Reply(done=True, error=_one_line(e))
                continue
            group = groups.setdefault(key, (functools.partial(self._entry, key, load), [], []))
            group[1].append(i)
            group[2].append(adapter)
        start = time.perf_counter()
        threads = []
        # One short-lived thread per model: it loads the model (if needed) and generates.
        # Torch work stays out of the caller's thread (see generation_threads).
        for get_entry, rows, adapters in groups.values():
            t = threading.Thread(target=_generate_group, daemon=True, name="arena-generate",
                                 args=(get_entry, [requests[i] for i in rows], rows, adapters, events, cancel,
                                       len(groups)))
            t.start()
            threads.append(t)
        yield [Reply(**r.__dict__) for r in replies]
        deadline = start + timeout_s
        try:
            while not all(r.done for r in replies):
                try:
                    kind, row, payload = events.get(timeout=0.25)
                except queue.Empty:
                    if time.perf_counter() > deadline:
                        cancel.set()
                    if not any(t.is_alive() for t in threads):  # a thread ended without saying so
                        for r in replies:
                            if not r.done:
                                r.done, r.error = True, r.error or "generation ended unexpectedly"
                        break
                    continue
                now = time.perf_counter() - start
                # Take every event already waiting, then yield once: one wake-up a decode
                # step, not one a row, so this thread disturbs the generating one less.
                pending = [(kind, row, payload)]
                while True:
                    try:
                        pending.append(events.get_nowait())
                    except queue.Empty:
                        break
                for kind, row, payload in pending:
                    r = replies[row]
                    if kind == "text":
                        r.text, r.tokens = payload
                        r.first_token_s = r.first_token_s if r.first_token_s is not None else now
                    elif kind == "done":
                        r.done, r.seconds, r.cut = True, now, payload == "length"
                    elif kind == "error":
                        r.done, r.error, r.seconds = True, payload, now
                yield [Reply(**x.__dict__) for x in replies]
        finally:
            cancel.set()  # a closed generator (the page went away) stops the threads...
            for t in threads:
                t.join(timeout=10)  # ...within a token; none is left running torch at exit
            self._trim()


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def _generate_group(get_entry: Callable, reqs: list[Request], rows: list[int], adapters: list,
                    events: queue.Queue, cancel: threading.Event, groups: int = 1) -> None:
    # torch.set_num_threads sets this thread's OpenMP/MKL threads and the default that
    # threads starting later inherit; in a new thread get_num_threads reads that default,
    # which is put back when this thread is done.
    default = torch.get_num_threads()
    torch.set_num_threads(generation_threads(groups))
    try:
        entry = get_entry()   # loads the model on first use
        with entry.lock:
            _generate_locked(entry, reqs, rows, adapters, events, cancel)
    except Exception as e:  # noqa: BLE001 — any failure ends these rows with a message, never a hang
        for row in rows:
            events.put(("error", row, _one_line(e)))
    finally:
        torch.set_num_threads(default)


def _generate_locked(entry, reqs, rows, adapters, events, cancel) -> None:
    from transformers import StoppingCriteriaList, LogitsProcessorList

    # Load adapters first (under the lock): the base model may become a PEFT model here.
    names = [entry.adapter_name(*a) if isinstance(a, tuple) else a for a in adapters]
    tok, model = entry.tokenizer, entry.model
    texts = [tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in reqs]
    tok.padding_side = "left"  # decoder-only batches pad on the left so every row ends at the prompt
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    samplings = [r.sampling for r in reqs]
    limits = [int(s.max_new_tokens) for s in samplings]
    eos = eos_ids(model, tok)
    streamer = RowStreamer(tok, rows, events, eos, limits)
    kwargs = dict(max_new_tokens=max(limits), streamer=streamer,
                  do_sample=True, temperature=1.0, top_p=1.0, top_k=0,  # RowSampler does the warping
                  logits_processor=LogitsProcessorList([RowSampler(samplings)]),
                  stopping_criteria=StoppingCriteriaList([Cancelled(cancel)]),
                  pad_token_id=tok.pad_token_id, eos_token_id=sorted(eos) or None)
    rows = contextlib.nullcontext(False)
    if entry.adapters:  # a PEFT model: each row runs its own adapter ("__base__" = none)
        rows = row_adapters(model, [n or PEFT_BASE for n in names], PEFT_BASE)
    torch.manual_seed(int(samplings[0].seed))
    with torch.inference_mode(), rows as by_mask:
        if entry.adapters and not by_mask:   # a LoRA variant: PEFT's own mixed batch
            kwargs["adapter_names"] = [n or PEFT_BASE for n in names]
        model.generate(**batch, **kwargs)
    streamer.end()


def blind_order(rng) -> bool:
    """True when the two candidates swap sides (a fair coin per pair, from `rng`), so
    which model is "A" tells an annotator nothing."""
    return rng.random() < 0.5
