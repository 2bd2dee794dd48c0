"""Run configuration: typed dataclasses, their YAML form, and validation.

A run is described by one `RunConfig`. Each concern has its own small dataclass
(`data`, `train`, `lora`, `qlora`, `dpo`, `kto`, `orpo`), and every field carries one line of help
in its metadata; the CLI's `--help` and the app's widgets read it from here, so it is
written once.

    cfg = RunConfig.from_yaml("labs/lab2_lora.yaml")
    cfg = apply_overrides(cfg, ["train.max_steps=20", "lora.r=4"])
    cfg.validate()          # raises ConfigError("train.lr: must be > 0 (got -1.0)")

Validation never loads a model: a bad value fails in milliseconds, naming the field
and, for choices, the allowed values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METHODS = ("full", "lora", "qlora", "dpo", "kto", "orpo")
# The methods that learn from feedback, and the data each reads: "dpo" = preference pairs
# (prompt / chosen / rejected), "kto" = single answers marked desirable or not.
PREFERENCE_DATA = {"dpo": "dpo", "orpo": "dpo", "kto": "kto"}
# What each kind of data is, for messages that say what a method needs.
DATA_KINDS = {"sft": "SFT examples", "dpo": "preference pairs (prompt / chosen / rejected)",
              "kto": "answers labelled good or bad (prompt / completion / label)"}
DPO_ADAPTERS = ("lora", "qlora", "full")


def data_fits(method: str, objective: str) -> bool:
    """Whether data of `objective` ("sft", "dpo" pairs, "kto" labelled answers; see
    tunelab.data) can train `method`. KTO also takes pairs, split into two answers."""
    need = PREFERENCE_DATA.get(method, "sft")
    return objective == need or (need == "kto" and objective == "dpo")


def methods_for(objective: str) -> list[str]:
    """The methods that can train on data of `objective`."""
    return [m for m in METHODS if data_fits(m, objective)]
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
QUANT_TYPES = ("nf4", "fp4")
DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_MODEL = "smollm2-135m-instruct"


class ConfigError(ValueError):
    """A config value is invalid; the message starts with the dotted field name."""


def _f(default: Any, help: str, choices: tuple | None = None, **kw) -> Any:
    """A dataclass field with its help line (and allowed values) in the metadata."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class DataConfig:
    train: str = _f("labs/data/pirate_sft.jsonl",
                    "Training data file (.jsonl, .json, .csv or .parquet); the format is detected.")
    eval: str | None = _f(None, "Optional separate evaluation file; overrides eval_fraction.")
    eval_fraction: float = _f(0.0, "Share of the training rows held out for evaluation (0 = none).")
    completion_only: bool = _f(True, "SFT: compute the loss on the answer tokens only (prompt tokens masked).")


@dataclass
class TrainConfig:
    max_steps: int = _f(30, "Number of optimiser steps to train for.")
    batch_size: int = _f(8, "Examples (or preference pairs) per device per step.")
    grad_accum: int = _f(1, "Micro-batches accumulated into one optimiser step.")
    lr: float = _f(2.0e-4, "Peak learning rate (AdamW).")
    scheduler: str = _f("linear", "Learning-rate schedule after warm-up.", SCHEDULERS)
    warmup_ratio: float = _f(0.0, "Share of the steps spent warming the learning rate up from 0.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_length: int = _f(256, "Longest tokenised example; longer ones are truncated.")
    precision: str = _f("auto", "Compute precision: auto = bf16 where the hardware has it natively, else "
                                "fp16 on a GPU and fp32 on a CPU.", PRECISIONS)
    seed: int = _f(0, "Random seed for data order, initialisation and the eval split.")
    logging_steps: int = _f(1, "Log loss, learning rate and throughput every N steps.")
    eval_steps: int = _f(0, "Evaluate every N steps when there is eval data (0 = at the end only).")
    save_steps: int = _f(0, "Write a resumable checkpoint every N steps (0 = at the end only).")
    group_by_length: bool = _f(True, "SFT and ORPO: batch examples (ORPO: pairs) of similar length together, "
                                     "so less of each batch is padding (faster; each example's loss is "
                                     "unchanged, only which examples share a batch). DPO and KTO ignore it.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass: less memory, slower.")
    auto_micro_batch: bool = _f(True, "When a batch would not fit in the memory free at Start, train it as smaller "
                                      "micro-batches with gradient accumulation: the same effective batch, "
                                      "the same steps, less memory.")
    device: str = _f("auto", "Where to train: auto = CUDA when present, else CPU.", DEVICES)


@dataclass
class LoraConfig:
    r: int = _f(8, "LoRA rank r: the inner dimension of A (r x in) and B (out x r).")
    alpha: float = _f(16.0, "LoRA alpha; the update B·A is scaled by alpha / r (Hu et al. 2021).")
    dropout: float = _f(0.0, "Dropout on the LoRA branch input. 0 (the default) skips it: "
                          "on CPU the random masks cost ~20% of a step, and a short lab run "
                          "does not overfit; 0.05-0.1 can help on small data trained for long.")
    target_modules: Any = _f("all-linear",
                             "Layers that get adapters: 'all-linear' or a list of module names (q_proj, v_proj, ...).")


@dataclass
class QLoraConfig:
    quant_type: str = _f("nf4", "4-bit data type of the frozen base: NormalFloat4 (QLoRA paper) or fp4.",
                         QUANT_TYPES)
    double_quant: bool = _f(True, "Also quantise the quantisation constants (saves ~0.4 bit per weight).")


@dataclass
class DpoConfig:
    beta: float = _f(0.1, "DPO beta: how far the policy may move from the reference (Rafailov et al. 2023).")
    adapter: str = _f("lora", "What DPO trains: LoRA adapters, LoRA on a 4-bit base, or every weight.",
                      DPO_ADAPTERS)
    loss_type: str = _f("sigmoid", "Preference loss: sigmoid is the DPO paper's; ipo, hinge, robust are variants.",
                        DPO_LOSSES)
    precompute_ref: bool = _f(True, "Compute the reference model's log-probs once, before training, instead "
                                    "of a second forward pass every step (faster; the reference never "
                                    "changes, so the loss is the same).")


@dataclass
class KtoConfig:
    beta: float = _f(0.1, "KTO beta: how far the policy may move from the reference (Ethayarajh et al. 2024).")
    adapter: str = _f("lora", "What KTO trains: LoRA adapters, LoRA on a 4-bit base, or every weight.",
                      DPO_ADAPTERS)
    desirable_weight: float = _f(1.0, "Weight of the answers marked good; raise it when they are the fewer "
                                      "(the paper keeps weight x count within 1 to 4/3 of the other side's).")
    undesirable_weight: float = _f(1.0, "Weight of the answers marked bad; raise it when they are the fewer.")
    precompute_ref: bool = _f(True, "Compute the reference model's log-probs once, before training, instead "
                                    "of a second forward pass every step (the reference never changes).")


@dataclass
class OrpoConfig:
    beta: float = _f(0.1, "ORPO lambda: the weight of the odds-ratio term beside the SFT loss on the "
                          "chosen answer (Hong et al. 2024).")
    adapter: str = _f("lora", "What ORPO trains: LoRA adapters, LoRA on a 4-bit base, or every weight.",
                      DPO_ADAPTERS)


@dataclass
class SpeedConfig:
    """The speed pieces TuneLab adds to TRL's trainers, each switchable, each measured
    against its own arm with the piece off (benchmarks/README.md). None changes the loss."""
    answer_head: bool = _f(True, "Score only the answer tokens in the output head (SFT, DPO, KTO, ORPO); off: "
                                 "TRL's head, which on a CPU scores every position, prompt and padding too.")
    pack_rows: bool = _f(True, "KTO: short rows share a decoder row; ORPO: a pair is one row, its prompt run "
                               "once. Off: each row padded to the batch's longest, as TRL does.")
    short_attention: bool = _f(True, "Plain matmul attention for short CPU batches (up to 192 tokens), SDPA "
                                     "for the rest; off: SDPA for every batch.")


SECTIONS = {"data": DataConfig, "train": TrainConfig, "lora": LoraConfig, "qlora": QLoraConfig, "dpo": DpoConfig,
            "kto": KtoConfig, "orpo": OrpoConfig, "speed": SpeedConfig}


@dataclass
class RunConfig:
    method: str = _f("lora", "Fine-tuning method: full, lora, qlora (learn from examples); dpo, orpo (from "
                             "pairs: this answer is better than that one); kto (from single answers "
                             "marked good or bad).", METHODS)
    model: str = _f(DEFAULT_MODEL, "Base model: the bundled name, a local model folder or a hub id.")
    name: str | None = _f(None, "Optional run name; the run folder is <time>-<name>.")
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    qlora: QLoraConfig = field(default_factory=QLoraConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    kto: KtoConfig = field(default_factory=KtoConfig)
    orpo: OrpoConfig = field(default_factory=OrpoConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    # --- derived views -------------------------------------------------------------
    @property
    def objective(self) -> str:
        """What the training data is: `sft` examples, `dpo` preference pairs (DPO and
        ORPO) or `kto` single answers marked desirable or not."""
        return PREFERENCE_DATA.get(self.method, "sft")

    @property
    def adapter(self) -> str | None:
        """What a feedback method trains (`dpo.adapter`, `kto.adapter`, `orpo.adapter`);
        None for full, lora and qlora, which name it themselves."""
        return getattr(self, self.method).adapter if self.method in PREFERENCE_DATA else None

    @property
    def weights(self) -> str:
        """`full`, `lora` or `qlora`: which weights train."""
        return self.adapter or self.method

    # --- dict / YAML ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")

    @classmethod
    def from_dict(cls, d: dict | None) -> "RunConfig":
        d = dict(d or {})
        if not isinstance(d, dict):
            raise ConfigError("config: must be a mapping of fields")
        top = {f.name for f in dataclasses.fields(cls)}
        _reject_unknown("", d, top)
        kw = {}
        for name, value in d.items():
            if name in SECTIONS:
                if value is None:
                    value = {}
                if not isinstance(value, dict):
                    raise ConfigError(f"{name}: must be a mapping, got {type(value).__name__}")
                sect = SECTIONS[name]
                _reject_unknown(name + ".", value, {f.name for f in dataclasses.fields(sect)})
                kw[name] = sect(**{k: _coerce(sect, k, v) for k, v in value.items()})
            else:
                kw[name] = _coerce(cls, name, value)
        return cls(**kw)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            d = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if d is not None and not isinstance(d, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of fields")
        if d and "title" in d and isinstance(d.get("config"), dict):
            d = d["config"]  # a lab card (labs/*.yaml): train its run config
        return cls.from_dict(d)

    # --- validation ----------------------------------------------------------------
    def validate(self) -> "RunConfig":
        """Check every field; raise ConfigError naming the first bad one. Returns self."""
        for path, value, f in iter_fields(self):
            choices = f.metadata.get("choices")
            if choices is not None and value not in choices:
                raise ConfigError(f"{path}: must be one of {', '.join(choices)} (got {value!r})")
        _check_type(self, "model", str, nonempty=True)
        if self.name is not None:
            _check_type(self, "name", str, nonempty=True)
        _check_type(self, "data.train", str, nonempty=True)
        if self.data.eval is not None:
            _check_type(self, "data.eval", str, nonempty=True)
        _check_range(self, "data.eval_fraction", float, lo=0.0, hi=0.9, hi_open=False)
        _check_type(self, "data.completion_only", bool)
        t = "train."
        for name in ("max_steps", "batch_size", "grad_accum", "max_length", "logging_steps"):
            _check_range(self, t + name, int, lo=1)
        for name in ("eval_steps", "save_steps", "seed"):
            _check_range(self, t + name, int, lo=0)
        _check_range(self, t + "lr", float, lo=0.0, lo_open=True, hi=1.0)
        _check_range(self, t + "warmup_ratio", float, lo=0.0, hi=1.0, hi_open=True)
        _check_range(self, t + "weight_decay", float, lo=0.0)
        _check_type(self, t + "gradient_checkpointing", bool)
        _check_type(self, t + "auto_micro_batch", bool)
        _check_type(self, t + "group_by_length", bool)
        _check_range(self, "lora.r", int, lo=1, hi=4096)
        _check_range(self, "lora.alpha", float, lo=0.0, lo_open=True)
        _check_range(self, "lora.dropout", float, lo=0.0, hi=1.0, hi_open=True)
        tm = self.lora.target_modules
        if not (tm == "all-linear" or (isinstance(tm, list) and tm and all(isinstance(x, str) and x for x in tm))):
            raise ConfigError(f"lora.target_modules: must be 'all-linear' or a non-empty list of module names "
                              f"(got {tm!r})")
        _check_type(self, "qlora.double_quant", bool)
        _check_range(self, "dpo.beta", float, lo=0.0, lo_open=True)
        _check_type(self, "dpo.precompute_ref", bool)
        _check_range(self, "kto.beta", float, lo=0.0, lo_open=True)
        _check_range(self, "kto.desirable_weight", float, lo=0.0, lo_open=True)
        _check_range(self, "kto.undesirable_weight", float, lo=0.0, lo_open=True)
        _check_type(self, "kto.precompute_ref", bool)
        _check_range(self, "orpo.beta", float, lo=0.0, lo_open=True)
        for f in dataclasses.fields(SpeedConfig):   # every speed piece is a switch
            _check_type(self, f"speed.{f.name}", bool)
        return self


def _coerce(cls, name: str, v: Any) -> Any:
    """YAML 1.1 reads `2e-4` as a string and users type `20` in text boxes: coerce
    numbers to the field's declared type; anything unparseable is left for validate()."""
    typ = {f.name: f.type for f in dataclasses.fields(cls)}[name]
    if isinstance(v, bool):
        return v
    if typ == "float" and isinstance(v, (int, str)):
        try:
            return float(v)
        except ValueError:
            return v
    if typ == "int" and isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            return v
    if typ == "int" and isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _reject_unknown(prefix: str, d: dict, known: set) -> None:
    for k in d:
        if k not in known:
            raise ConfigError(f"{prefix}{k}: unknown field; known fields: {', '.join(sorted(known))}")


def _get(cfg: RunConfig, path: str) -> Any:
    obj = cfg
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _check_type(cfg: RunConfig, path: str, typ: type, nonempty: bool = False) -> Any:
    v = _get(cfg, path)
    ok = isinstance(v, typ) and not (typ is not bool and isinstance(v, bool))
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        ok = True
    if not ok:
        raise ConfigError(f"{path}: must be {typ.__name__} (got {v!r})")
    if nonempty and not str(v).strip():
        raise ConfigError(f"{path}: must not be empty")
    return v


def _check_range(cfg, path, typ, lo=None, hi=None, lo_open=False, hi_open=False) -> None:
    v = _check_type(cfg, path, typ)
    if v != v:  # NaN
        raise ConfigError(f"{path}: must be a number (got nan)")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ConfigError(f"{path}: must be {'>' if lo_open else '>='} {lo} (got {v})")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise ConfigError(f"{path}: must be {'<' if hi_open else '<='} {hi} (got {v})")


def iter_fields(cfg: RunConfig | None = None):
    """Yield (dotted path, value, dataclass Field) for every leaf field, in order."""
    cfg = cfg or RunConfig()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in SECTIONS:
            for sf in dataclasses.fields(value):
                yield f"{f.name}.{sf.name}", getattr(value, sf.name), sf
        else:
            yield f.name, value, f


def field_help(path: str) -> str:
    """The one-line help of a dotted field, e.g. field_help('lora.r')."""
    for p, _, f in iter_fields():
        if p == path:
            return f.metadata["help"]
    raise KeyError(path)


def field_choices(path: str) -> tuple | None:
    for p, _, f in iter_fields():
        if p == path:
            return f.metadata.get("choices")
    raise KeyError(path)


def apply_overrides(cfg: RunConfig, overrides: list[str] | None) -> RunConfig:
    """Apply `section.field=value` strings (values parsed as YAML) and return a new config."""
    d = cfg.to_dict()
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE, e.g. train.max_steps=20")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        target = d
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                raise ConfigError(f"{key}: unknown field")
            target = target[part]
        if parts[-1] not in target:
            raise ConfigError(f"{key}: unknown field; known fields: "
                              f"{', '.join(p for p, _, _ in iter_fields())}")
        target[parts[-1]] = value
    return RunConfig.from_dict(d)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults), apply overrides, validate."""
    cfg = RunConfig.from_yaml(path) if path else RunConfig()
    return apply_overrides(cfg, overrides).validate()
