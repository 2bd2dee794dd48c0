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
sweep ({field, values}: runs to compare, e.g. LoRA ranks) and arena ({pairs: file}: preference
pairs to load into the arena). A card is also a config file: `python -m tunelab train
labs/lab2_lora.yaml` trains its `config` block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import ConfigError, RunConfig
from .labcheck import LabCheck

LABS_DIR = Path(__file__).resolve().parents[1] / "labs"
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
    arena: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def minutes(self) -> float:
        return float(self.expected["minutes"])

    def sweep_configs(self) -> list[RunConfig]:
        """One config per sweep value (e.g. the LoRA ranks), named after it."""
        if not self.sweep:
            return []
        from .config import apply_overrides
        out = []
        for v in self.sweep["values"]:
            cfg = apply_overrides(RunConfig.from_dict(self.config.to_dict()), [f"{self.sweep['field']}={v}"])
            cfg.name = f"lab{self.number}-{self.sweep['field'].split('.')[-1]}{v}"
            out.append(cfg.validate())
        return out


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
    known = set(REQUIRED) | {"sweep", "arena"}
    return Lab(key=str(d["key"]), number=int(d["number"]), title=str(d["title"]), concept=str(d["concept"]).strip(),
               instructions=str(d["instructions"]).strip(), config=cfg, dataset=str(d["dataset"]), check=check,
               expected=exp, path=p, sweep=sweep, arena=d.get("arena"), extra={k: v for k, v in d.items() if k not in known})


def list_labs(root: str | Path | None = None) -> list[Lab]:
    root = Path(root) if root else LABS_DIR
    return sorted((load_lab(p) for p in sorted(root.glob("lab*.yaml"))), key=lambda lab: lab.number)


def get_lab(key: str, root: str | Path | None = None) -> Lab:
    for lab in list_labs(root):
        if key in (lab.key, str(lab.number), lab.path.stem):
            return lab
    raise LabError(f"no lab {key!r}; the labs are: {', '.join(lab.key for lab in list_labs(root))}")
