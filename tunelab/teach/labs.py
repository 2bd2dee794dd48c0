"""Workshop lab cards: one YAML file a lab in `labs/`, each teaching one idea of the article.

    for lab in list_labs():
        print(lab.number, lab.key, lab.title, lab.minutes)
    cfg = get_lab("lora").config          # a RunConfig, ready for tunelab.run or jobs.launch

A card holds: key (the method name it teaches, or `loop`), number, title, concept (one
paragraph from the article), instructions (markdown for the attendee), config (a run
config, the same fields as configs/*.yaml), dataset, check (the lesson as a check a program
runs: held-out prompts and thresholds, see labcheck.py), expected (the outcome measured on a
2-core CPU with the bundled model: loss range, minutes, peak memory, and once measured each
checked score as [base, tuned]), and optionally
sweep ({field, values}: runs to compare, e.g. LoRA ranks), next (a second step of the lab: the
card's config with some fields changed, e.g. DPO pushed too far, and the check's scores it is
meant to break), compare (arms trained beside the card's run, each the card's config with some
fields changed, e.g. lab 6's KTO and ORPO beside its DPO; each must pass the card's check too)
and arena ({pairs: file}: preference pairs to load into the arena).

Figures in a card's concept and instructions are not typed: `{{lab2.trainable_pct}}` is
filled in from labs/results.json, which labs/measure.py writes (see `fill`). A card is also a config file: `python -m tunelab train
labs/lab2_lora.yaml` trains its `config` block.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..training.config import ConfigError, RunConfig
from .labcheck import LabCheck

LABS_DIR = Path(__file__).resolve().parents[2] / "labs"
REQUIRED = ("key", "number", "title", "concept", "instructions", "config", "dataset", "check", "expected")
EXPECTED = ("loss", "minutes", "peak_memory_mb")


class LabError(ValueError):
    """A lab card that cannot be used; the message names the file and the field."""


@dataclass
class Lab:
    key: str
    number: int
    title: str
    concept: str
    instructions: str
    config: RunConfig
    dataset: str
    check: LabCheck
    expected: dict
    path: Path
    sweep: dict | None = None
    next: dict | None = None
    arena: dict | None = None
    compare: list | None = None
    extra: dict = field(default_factory=dict)

    @property
    def minutes(self) -> float:
        return float(self.expected["minutes"])

    def sweep_configs(self) -> list[RunConfig]:
        """One config per sweep value (e.g. the LoRA ranks), named after it."""
        if not self.sweep:
            return []
        from ..training.config import apply_overrides
        out = []
        for v in self.sweep["values"]:
            cfg = apply_overrides(RunConfig.from_dict(self.config.to_dict()), [f"{self.sweep['field']}={v}"])
            cfg.name = f"lab{self.number}-{self.sweep['field'].split('.')[-1]}{v}"
            out.append(cfg.validate())
        return out

    def next_config(self) -> RunConfig | None:
        """The lab's second step (`next`): its config with the step's fields changed, named after it."""
        if not self.next:
            return None
        from ..training.config import apply_overrides
        cfg = apply_overrides(RunConfig.from_dict(self.config.to_dict()), next_overrides(self.next))
        cfg.name = f"lab{self.number}-{self.next['name']}"
        return cfg.validate()

    def arm(self, name: str) -> dict:
        """The `compare` arm called `name` (LabError names the arms when there is none)."""
        for arm in self.compare or []:
            if arm["name"] == name:
                return arm
        raise LabError(f"lab {self.number}: no arm {name!r}; its arms: "
                       f"{', '.join(a['name'] for a in self.compare or []) or 'none'}")

    def arm_config(self, name: str) -> RunConfig:
        """A `compare` arm's config: the card's with the arm's fields changed, named after it."""
        from ..training.config import apply_overrides
        cfg = apply_overrides(RunConfig.from_dict(self.config.to_dict()), next_overrides(self.arm(name)))
        cfg.name = f"lab{self.number}-{name}"
        return cfg.validate()


def next_overrides(step: dict) -> list[str]:
    """A `next` step's changes as --set strings: {"dpo.beta": 0.02} → ["dpo.beta=0.02"]."""
    return [f"{k}={v}" for k, v in step["set"].items()]


def load_lab(path: str | Path) -> Lab:
    p = Path(path)
    try:
        d = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise LabError(f"{p.name}: cannot read the card ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise LabError(f"{p.name}: a lab card is a mapping of fields")
    missing = [k for k in REQUIRED if d.get(k) in (None, "")]
    if missing:
        raise LabError(f"{p.name}: missing {', '.join(missing)}")
    try:
        cfg = RunConfig.from_dict(d["config"]).validate()
    except ConfigError as e:
        raise LabError(f"{p.name}: config.{e}") from None
    if cfg.data.train != d["dataset"]:
        raise LabError(f"{p.name}: dataset {d['dataset']!r} is not the config's data.train {cfg.data.train!r}")
    exp = d["expected"]
    if not isinstance(exp, dict) or any(k not in exp for k in EXPECTED):
        raise LabError(f"{p.name}: expected needs {', '.join(EXPECTED)}")
    lo_hi = exp["loss"]
    if not (isinstance(lo_hi, list) and len(lo_hi) == 2 and lo_hi[0] <= lo_hi[1]):
        raise LabError(f"{p.name}: expected.loss must be [low, high]")
    try:
        check = LabCheck.from_dict(d["check"])
        check.items()
    except (OSError, ValueError, TypeError) as e:
        raise LabError(f"{p.name}: {e}") from None
    for metric in check.thresholds():  # measured scores, written by labs/measure.py
        if metric in exp and not (isinstance(exp[metric], list) and len(exp[metric]) == 2):
            raise LabError(f"{p.name}: expected.{metric} must be [base, tuned]")
    sweep = d.get("sweep")
    if sweep is not None and not (isinstance(sweep, dict) and sweep.get("field") and sweep.get("values")):
        raise LabError(f"{p.name}: sweep needs a field and values")
    step = d.get("next")
    if step is not None:
        _check_next(p.name, step, cfg, check)
    arms = d.get("compare")
    if arms is not None:
        if not (isinstance(arms, list) and arms):
            raise LabError(f"{p.name}: compare is a list of arms, each with a name, a title and set")
        for arm in arms:
            _check_next(p.name, arm, cfg, check, kind="compare")
        names = [a["name"] for a in arms]
        reserved = {"card"} | ({step["name"]} if step else set())
        if len(set(names)) < len(names) or reserved & set(names):
            raise LabError(f"{p.name}: compare: every arm needs its own name, not card's or next's (got {names})")
    known = set(REQUIRED) | {"sweep", "arena", "next", "compare"}
    lab = Lab(key=str(d["key"]), number=int(d["number"]), title=str(d["title"]), concept=str(d["concept"]).strip(),
              instructions=str(d["instructions"]).strip(), config=cfg, dataset=str(d["dataset"]), check=check,
              expected=exp, path=p, sweep=sweep, next=step, arena=d.get("arena"), compare=arms,
              extra={k: v for k, v in d.items() if k not in known})
    results = measured_results()  # read once for both texts
    lab.concept, lab.instructions = fill(lab.concept, p.name, results), fill(lab.instructions, p.name, results)
    return lab


def _check_next(name: str, step, cfg: RunConfig, check: LabCheck, kind: str = "next") -> None:
    """A `next` step or a `compare` arm: a name, a title and the fields it changes (a step
    may also name the check's scores it `breaks`)."""
    from ..training.config import apply_overrides
    if not (isinstance(step, dict) and step.get("name") and step.get("title") and isinstance(step.get("set"), dict)
            and step["set"]):
        raise LabError(f"{name}: {kind} needs a name, a title and set (the fields it changes, e.g. "
                       f"{{dpo.beta: 0.02}})")
    allowed = {"name", "title", "set"} | ({"breaks"} if kind == "next" else set())
    unknown = set(step) - allowed
    if unknown:
        raise LabError(f"{name}: {kind} has unknown fields {sorted(unknown)}; it takes {', '.join(sorted(allowed))}")
    try:
        apply_overrides(RunConfig.from_dict(cfg.to_dict()), next_overrides(step)).validate()
    except ConfigError as e:
        raise LabError(f"{name}: {kind}.set: {e}") from None
    breaks = step.get("breaks", [])
    judged = check.thresholds()
    if not isinstance(breaks, list) or any(b not in judged for b in breaks):
        raise LabError(f"{name}: next.breaks lists the check's scores the step is meant to miss "
                       f"(of {', '.join(judged)}); got {breaks!r}")


def list_labs(root: str | Path | None = None) -> list[Lab]:
    root = Path(root) if root else LABS_DIR
    return sorted((load_lab(p) for p in sorted(root.glob("lab*.yaml"))), key=lambda lab: lab.number)


def get_lab(key: str, root: str | Path | None = None) -> Lab:
    for lab in list_labs(root):
        if key in (lab.key, str(lab.number), lab.path.stem):
            return lab
    raise LabError(f"no lab {key!r}; the labs are: {', '.join(lab.key for lab in list_labs(root))}")


# --------------------------------------------------------------------------- figures from measurement

RESULTS = LABS_DIR / "results.json"
PLACEHOLDER = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
NOT_MEASURED = "(not measured yet: run python -m labs.measure)"
# How each measured field reads in a card's text.
FORMATS = {"minutes": "{:.1f} min", "minutes_fp32": "{:.1f} min", "process_minutes": "{:.1f} min",
           "peak_memory_mb": "{:,.0f} MB", "output_size_mb": "{:.1f} MB", "trainable_pct": "{:.2f}%",
           "final_loss": "{:.2f}", "steps": "{:d}", "nf4_error": "{:.1%}", "margin": "{:.1f}",
           "accuracy": "{:.0%}", "kl": "{:.2f}", "log_odds": "{:.2f}", "s_per_step": "{:.1f} s"}


ANSWERS = ("before", "after")  # the base's and the tuned model's answer to the held-out set's first prompt
EMPTY_ANSWER = "nothing (the model ends its answer at once)"   # a measured answer that is empty
ANSWER_CHARS = 240


def file_sha(path: Path) -> str | None:
    import hashlib
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def stale_data(number: int, results: dict | None = None) -> list[str]:
    """The data files a lab's measured runs trained on that have changed since (their sha256
    then against now): the card's figures describe other data until labs/measure.py runs again."""
    results = measured_results() if results is None else results
    out = []
    for row in results.get("rows", []):
        if row.get("lab") != number:
            continue
        for name, sha in (row.get("data") or {}).items():
            if name not in out and sha != file_sha(LABS_DIR.parent / name):
                out.append(name)
    return out


def plain(text: str, limit: int) -> str:
    """A model's answer for a line of markdown: one line, at most `limit` characters (cut at
    a word), and its own markdown (backticks, stars, #, |, <>) escaped so it stays text."""
    text = " ".join(text.split())
    text = text[:limit].rsplit(" ", 1)[0] + " …" if len(text) > limit else text
    return re.sub(r"([\\`*_#\[\]<>|~])", r"\\\1", text)


def measured_results(path: Path | None = None) -> dict:
    p = path or RESULTS
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"rows": []}


def measured(key: str, results: dict | None = None) -> str | None:
    """One measured figure as a card's text shows it, or None when it has not been measured.
    Keys: `machine`, `date`, or `lab<N>[.<run>].<field>`, where run is `card` (the default),
    a sweep variant (`r=64`), the `next` step's name or a `compare` arm's, and field one of FORMATS,
    `base.<score>`/`tuned.<score>` (the check's style, words, facts) or ANSWERS. A key naming no such
    field raises LabError, so a typo in a card fails its test."""
    results = measured_results() if results is None else results
    if key in ("machine", "date"):
        return results.get(key)
    parts = key.split(".")
    m = re.fullmatch(r"lab(\d+)", parts[0])
    if not m or len(parts) < 2:
        raise LabError(f"{{{{{key}}}}}: a measured figure is lab<N>[.<run>].<field>, machine or date")
    number, rest = int(m.group(1)), parts[1:]
    rows = {r["variant"]: r for r in results.get("rows", []) if r["lab"] == number}
    variant = "card"
    if len(rest) > 1 and rest[0] not in ("base", "tuned"):
        variant, rest = rest[0], rest[1:]
    field = ".".join(rest)
    side, _, metric = field.partition(".")
    if field not in FORMATS and field not in ANSWERS and not (
            side in ("base", "tuned") and metric in ("style", "words", "facts")):
        raise LabError(f"{{{{{key}}}}}: no measured field {field!r}; fields: {', '.join([*FORMATS, *ANSWERS])}, "
                       f"base.<score>, tuned.<score>")
    row = rows.get(variant)
    if row is None:
        return None
    if field in ANSWERS:  # the answer to the held-out set's first prompt, quoted, on one line, as plain text
        if row.get(field) is None:
            return None
        answer = plain(str(row[field]), ANSWER_CHARS)
        return f'"{answer}"' if answer else EMPTY_ANSWER
    if field in FORMATS:
        value = row.get(field)
        return None if value is None else FORMATS[field].format(value).replace("%", " %")
    from .labcheck import fmt_score
    value = (row.get("check") or {}).get(side, {}).get(metric)
    return None if value is None else fmt_score(metric, value)


def fill(text: str, card: str = "card", results: dict | None = None) -> str:
    """A card's text with each `{{key}}` replaced by its measured figure (see `measured`)."""
    results = measured_results() if results is None else results

    def one(m: re.Match) -> str:
        try:
            value = measured(m.group(1), results)
        except LabError as e:
            raise LabError(f"{card}: {e}") from None
        return NOT_MEASURED if value is None else value

    return PLACEHOLDER.sub(one, text)


# --------------------------------------------------------------------------- figures by machine class

MATRIX = LABS_DIR / "matrix.json"
CLASS_NAMES = {"avx2-fp32": "AVX2 kernels, fp32", "avx512-bf16": "AVX-512 kernels, bf16",
               "avx512-fp32": "AVX-512 kernels, fp32"}


def machine_class() -> str:
    """This machine's class as labs/matrix.py files its cells: the kernels torch runs
    ("avx2", "avx512", …) and the precision `auto` picks here ("fp32", "bf16")."""
    from ..modelio.loading import bf16_supported, cpu_capability
    return f"{cpu_capability()}-{'bf16' if bf16_supported('cpu') else 'fp32'}"


def class_name(cls: str) -> str:
    return CLASS_NAMES.get(cls, cls)


def matrix_summary(path: Path | None = None) -> dict:
    """labs/matrix.json's summary: {"<lab>:<variant>:<class>": {cells, passed, tuned: {score:
    [lo, hi]}, margin: {score: smallest}, s_per_step, process_minutes, peak_memory_mb: [lo, hi],
    threads, seeds}}; empty when the matrix has not been run."""
    try:
        return json.loads((path or MATRIX).read_text(encoding="utf-8")).get("summary", {})
    except (OSError, ValueError, AttributeError):
        return {}


def class_figures(number: int, variant: str = "card", summary: dict | None = None) -> dict[str, dict]:
    """One lab run's figures for every machine class measured: {class: summary entry}."""
    summary = matrix_summary() if summary is None else summary
    out = {}
    for g in summary.values():
        if g.get("lab") == number and g.get("variant") == variant:
            out[g["class"]] = g
    return out


def lab_minutes(lab: Lab, cls: str | None = None, summary: dict | None = None,
                field: str = "process_minutes", cores: int | None = None) -> tuple[float | None, str | None]:
    """Minutes the lab's runs (its card run and its `compare` arms) take on machines of class
    `cls` (default: this machine's), at the slowest cell measured there, and that class; or,
    when the class has not timed every one of those runs, the card's own `expected` figure
    (its fp32 one on an fp32 class) and None. `field="check_minutes"`: the same for the
    lab's check on those runs (None, None when unmeasured). Only cells that had their cores
    to themselves are timed (labs/matrix.py's `quiet`), and of those the ones with as many
    threads as this machine has `cores`, or the nearest below."""
    if cores is None:
        from ..common.cpushare import cores as machine_cores
        cores = machine_cores()
    summary = matrix_summary() if summary is None else summary
    cls = cls or machine_class()
    total = 0.0
    for v in ["card", *(a["name"] for a in lab.compare or [])]:
        timed = (class_figures(lab.number, v, summary).get(cls) or {}).get("timed") or {}
        fit = [int(t) for t in timed if int(t) <= cores] or [min((int(t) for t in timed), default=0)]
        span = (timed.get(str(max(fit))) or {}).get(field)
        if not span:
            total = None
            break
        total += span[1]
    if total is not None:
        return round(total, 1), cls
    if field != "process_minutes":
        return None, None
    fp32 = lab.expected.get("minutes_fp32")   # measure.py's run held to fp32 and AVX2 kernels
    return (float(fp32) if fp32 and cls.endswith("-fp32") else lab.minutes), None
