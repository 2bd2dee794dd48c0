"""Each lab's lesson as a check a program runs: held-out prompts, answered by the base and
by the tuned model with the same decoding, scored, and passed or failed on thresholds.

    check = get_lab("lora").check                         # the card's `check:` block
    result = run_check("<run id>", check)                 # base and tuned answers, scored
    result["base"], result["tuned"], result["misses"]     # {"style": 0.0, ...}, {...}, [] = pass

The scores (each answer scored alone, then taken over the prompt set):
- style: the share of answers in the pirate voice the pirate data teaches (`is_pirate`).
- words: the median number of words an answer has (whitespace-separated). The median,
  because one answer that rambles to the token limit should not decide a whole set.
- facts: the share of answers that contain their prompt's fact (`has_fact`), over the
  prompts that name one.

A card's check holds thresholds on these (min_style, max_words, min_facts). The tuned
model must meet every one; and the base must miss at least one, or the check shows
nothing the tuning did. Scoring is plain Python on strings; only `answer` loads a model.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # card paths (labs/heldout/...) are relative to the repository

# --------------------------------------------------------------------------- pirate style

# Words the pirate data (labs/data/pirate_sft.jsonl) uses and plain English answers do not:
# one of them marks an answer as pirate. "fair winds" ends every training answer.
STRONG = re.compile(r"\b(?:arr+|ahoy|avast|matey|mateys|yer|me hearties|landlubbers?|shiver me timbers|yo[- ]ho"
                    r"|fair winds)\b", re.IGNORECASE)
# Pirate habits that also occur in ordinary English ("ye olde", "aye" in a vote, "be" in
# "Be careful", "goin'" in casual speech): only two different ones together mark an answer.
WEAK = {"ye": re.compile(r"\bye\b", re.IGNORECASE),
        "aye": re.compile(r"\baye\b", re.IGNORECASE),
        "dropped g": re.compile(r"\b[a-z]{2,}in['’](?![a-z])", re.IGNORECASE)}
# "be" as the verb "is/are" ("the capital of Japan be Tokyo"); after these words, and at the
# start of a sentence (an order: "Be careful"), it is ordinary English.
NOT_COPULA = {"to", "will", "would", "can", "could", "should", "shall", "may", "might", "must", "not", "never",
              "won't", "cannot", "can't", "couldn't", "wouldn't", "shouldn't", "mustn't", "don't", "let", "always",
              "also", "just", "even", "still", "often", "usually", "i'll", "you'll", "it'll", "we'll", "they'll",
              "he'll", "she'll", "that'll", "there'll"}


def pirate_markers(text: str) -> dict[str, list[str]]:
    """The pirate markers found in a text, by kind: {"strong": [...], "weak": [...]}."""
    strong = [m.group(0).lower() for m in STRONG.finditer(text)]
    weak = [name for name, rx in WEAK.items() if rx.search(text)]
    tokens = re.findall(r"[a-z'’]+|[.!?:;]", text.lower())
    if any(t == "be" and i > 0 and tokens[i - 1] not in NOT_COPULA and tokens[i - 1] not in ".!?:;"
           for i, t in enumerate(tokens)):
        weak.append("be")
    return {"strong": strong, "weak": weak}


def is_pirate(text: str) -> bool:
    """In the pirate style: one strong marker (arr, ahoy, matey, yer, fair winds, ...), or
    two different weak ones (ye, aye, dropped g as in "sailin'", "be" for "is")."""
    found = pirate_markers(text)
    return bool(found["strong"]) or len(set(found["weak"])) >= 2


# --------------------------------------------------------------------------- length and facts

def words(text: str) -> int:
    return len(text.split())


def has_fact(text: str, accepted: list[str] | str) -> bool:
    """Whether the text states the fact in one of its accepted spellings, case-insensitive
    and bounded: "Paris" not inside "Parisian", "366" not inside "3660" or "1,366".
    Thousands separators in the text are dropped first, so "1,440" matches "1440"."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    for spelling in [accepted] if isinstance(accepted, str) else accepted:
        s = re.escape(spelling.strip())
        if spelling.strip()[:1].isdigit():  # a number: no digit, or digit and separator, either side
            pattern = rf"(?<!\d)(?<!\d[.,]){s}(?!\d)(?![.,]\d)"
        else:
            pattern = rf"(?<!\w){s}(?!\w)"
        if re.search(pattern, text, re.IGNORECASE):
            return True
    return False


def score(answers: list[str], items: list[dict]) -> dict:
    """The scores of one model's answers to a prompt set (items: {"prompt", "fact"?})."""
    with_fact = [(a, it["fact"]) for a, it in zip(answers, items) if it.get("fact")]
    out = {"style": sum(map(is_pirate, answers)) / len(answers),
           "words": float(statistics.median(words(a) for a in answers))}
    if with_fact:
        out["facts"] = sum(has_fact(a, f) for a, f in with_fact) / len(with_fact)
    return out


# --------------------------------------------------------------------------- a card's check

@dataclass
class LabCheck:
    """A card's `check:` block: the held-out prompts and what the tuned model must reach."""
    prompts: str                      # a JSONL file of {"prompt": ..., "fact": [spellings]?}, not trained on
    min_style: float | None = None    # at least this share of answers in the pirate style
    max_words: float | None = None    # at most this median of words per answer
    min_facts: float | None = None    # at least this share of answers with their fact

    RULES = {"min_style": ("style", ">="), "max_words": ("words", "<="), "min_facts": ("facts", ">=")}

    @classmethod
    def from_dict(cls, d: dict) -> "LabCheck":
        if not isinstance(d, dict) or not d.get("prompts"):
            raise ValueError("check needs prompts (a held-out JSONL file)")
        unknown = set(d) - {"prompts", *cls.RULES}
        if unknown:
            raise ValueError(f"check has unknown fields {sorted(unknown)}; it takes prompts, {', '.join(cls.RULES)}")
        chk = cls(**d)
        for name in cls.RULES:
            v = getattr(chk, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise ValueError(f"check.{name} must be a number ≥ 0 (got {v!r})")
        if not chk.thresholds():
            raise ValueError(f"check needs at least one of {', '.join(cls.RULES)}")
        return chk

    def thresholds(self) -> dict[str, tuple[str, float]]:
        """{"style": (">=", 0.8), ...}: the scores this check judges."""
        return {metric: (op, float(getattr(self, name))) for name, (metric, op) in self.RULES.items()
                if getattr(self, name) is not None}

    def items(self) -> list[dict]:
        return load_prompts(self.prompts)


def load_prompts(path: str | Path) -> list[dict]:
    p = Path(path) if Path(path).is_absolute() else ROOT / path
    if not p.is_file():
        raise ValueError(f"check.prompts: no file {path}")
    items = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            item = None
        fact = item.get("fact", []) if isinstance(item, dict) else None
        if not (isinstance(item, dict) and isinstance(item.get("prompt"), str) and isinstance(fact, list)):
            raise ValueError(f'{p.name} line {n}: each line is {{"prompt": "...", "fact": ["spelling", ...]}} '
                             f'(fact optional)')
        items.append(item)
    if not items:
        raise ValueError(f"{p.name}: no prompts")
    return items


def meets(value: float | None, op: str, limit: float) -> bool:
    return value is not None and (value >= limit if op == ">=" else value <= limit)


def misses(check: LabCheck, base: dict, tuned: dict) -> list[str]:
    """What fails the check, each as a sentence; empty when the lab passes: every threshold
    met by the tuned model, and at least one missed by the base."""
    side = {">=": "below", "<=": "above"}
    out = [f"tuned {metric} {fmt_score(metric, tuned.get(metric))} is {side[op]} {fmt_score(metric, limit)}"
           for metric, (op, limit) in check.thresholds().items() if not meets(tuned.get(metric), op, limit)]
    if all(meets(base.get(m), op, limit) for m, (op, limit) in check.thresholds().items()):
        out.append("the base model already passes it, so it shows nothing the tuning did")
    return out


def describe(check: LabCheck) -> str:
    """The check in words, e.g. "style ≥ 80 %, words ≤ 35"."""
    sign = {">=": "≥", "<=": "≤"}
    return ", ".join(f"{m} {sign[op]} {fmt_score(m, v)}" for m, (op, v) in check.thresholds().items())


def explain(check: LabCheck) -> str:
    """The check and its decoding in one sentence, for the card view and the notebooks."""
    s = fair_sampling()
    return (f"{len(check.items())} held-out prompts ({check.prompts}), answered by the base and the tuned model "
            f"alike (temperature {s.temperature:g}, top-p {s.top_p:g}, seed {s.seed}, at most {s.max_new_tokens} "
            f"new tokens). The lab passes when the tuned answers reach {describe(check)} while the base's "
            f"answers miss at least one of these.")


def fmt_score(metric: str, v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.0%}".replace("%", " %") if metric in ("style", "facts") else f"{v:g}"


# --------------------------------------------------------------------------- answering

def fair_sampling():
    """The decoding every comparison of base and tuned uses: common.decoding.FAIR_SAMPLING (SmolLM2's
    recommended temperature 0.2, top-p 0.9, a fixed seed), as long as the Inside tab's answers."""
    from ..arena.chat import Sampling
    from ..common.decoding import FAIR_SAMPLING
    from .shift import SHIFT_MAX_NEW_TOKENS
    return Sampling(**FAIR_SAMPLING, max_new_tokens=SHIFT_MAX_NEW_TOKENS)


def answer(arena, source: str, prompts: list[str], sampling=None) -> list[dict]:
    """Answers of one source ("base" or "run:<id>") to prompts: [{"text", "cut"}].

    The prompts go in batches of the same size in the same order for every source, each
    source in calls of its own with the same seed, so base and tuned draw the same random
    numbers; a run that did not change the model answers word for word as the base does."""
    from ..arena.chat import Request
    from ..arena.decoding import SMALL_BATCH_ROWS
    sampling = sampling or fair_sampling()
    out = []
    for i in range(0, len(prompts), SMALL_BATCH_ROWS):
        reqs = [Request(source, [{"role": "user", "content": p}], sampling) for p in prompts[i:i + SMALL_BATCH_ROWS]]
        for replies in arena.stream(reqs):
            pass
        for r in replies:
            if r.error:
                raise RuntimeError(f"{source}: {r.error}")
            out.append({"text": r.text.strip(), "cut": r.cut})
    return out


def run_check(run_ref: str, check: LabCheck, arena=None, base_answers: list[dict] | None = None,
              limit: int | None = None) -> dict:
    """The check on one finished run: base and tuned answers to the held-out prompts, their
    scores, and what is missed. `base_answers`: reuse the base's answers to the same prompts.
    `limit`: only the first prompts, for a quick look (the notebooks' tests); a verdict takes all."""
    from ..training import runs
    from ..arena.chat import BASE, Arena
    from ..training.config import RunConfig
    run_dir = runs.find_run(run_ref)
    model = RunConfig.from_yaml(run_dir / "config.yaml").model
    arena = arena if arena is not None and arena.base_model == model else Arena(model)
    items = check.items()[:limit]
    prompts = [it["prompt"] for it in items]
    base = base_answers or answer(arena, BASE, prompts)
    tuned = answer(arena, "run:" + run_dir.name, prompts)
    b, t = score([a["text"] for a in base], items), score([a["text"] for a in tuned], items)
    return {"run": run_dir.name, "prompts": prompts, "base": b, "tuned": t, "misses": misses(check, b, t),
            "check": describe(check), "judged": list(check.thresholds()), "sampling": fair_sampling().to_dict(),
            "answers": {"base": base, "tuned": tuned}}


def summary(result: dict) -> str:
    """A run_check result in one line: "style: base 0 % → tuned 92 %. Passes (style ≥ 80 %)."."""
    b, t = result["base"], result["tuned"]
    scores = ", ".join(f"{m}: base {fmt_score(m, b.get(m))} → tuned {fmt_score(m, t.get(m))}"
                       for m in result["judged"])
    verdict = "Passes" if not result["misses"] else "Misses: " + "; ".join(result["misses"])
    return f"{scores}. {verdict} ({result['check']})."
