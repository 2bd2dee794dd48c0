"""Config: YAML round trip, overrides, validation that names the field, help on every field."""

import pytest

from tunelab.training.config import (ConfigError, RunConfig, apply_overrides, field_help, iter_fields, load_config)


def test_defaults_validate_and_round_trip_through_yaml(tmp_path):
    cfg = RunConfig.from_dict({"method": "dpo", "dpo": {"beta": 0.2, "adapter": "qlora"},
                               "train": {"max_steps": 5, "lr": "2e-4"}, "lora": {"target_modules": ["q_proj"]}})
    cfg.validate()
    assert cfg.train.lr == 2e-4  # YAML 1.1 reads 2e-4 as a string; it is coerced
    path = tmp_path / "c.yaml"
    cfg.save(path)
    again = RunConfig.from_yaml(path)
    assert again == cfg
    assert again.objective == "dpo" and again.weights == "qlora"


def test_method_axes():
    assert RunConfig(method="qlora").objective == "sft"
    assert RunConfig(method="qlora").weights == "qlora"
    assert RunConfig(method="dpo").weights == "lora"  # the dpo default adapter


def test_every_field_has_one_line_of_help():
    paths = []
    for path, _, f in iter_fields():
        help_text = f.metadata.get("help", "")
        assert help_text and "\n" not in help_text, path
        paths.append(path)
    assert {"method", "lora.r", "qlora.quant_type", "dpo.beta", "dpo.adapter", "train.precision"} <= set(paths)
    assert "rank" in field_help("lora.r")


@pytest.mark.parametrize("override, field, words", [
    ("method=sgd", "method", ["full, lora, qlora, dpo", "'sgd'"]),
    ("lora.r=0", "lora.r", [">= 1", "got 0"]),
    ("train.lr=-1", "train.lr", ["> 0.0"]),
    ("train.max_length=0", "train.max_length", [">= 1"]),
    ("train.max_steps=0", "train.max_steps", [">= 1"]),
    ("train.batch_size=abc", "train.batch_size", ["must be int"]),
    ("train.precision=fp8", "train.precision", ["auto, bf16, fp16, fp32"]),
    ("dpo.adapter=prefix", "dpo.adapter", ["lora, qlora, full"]),
    ("dpo.beta=0", "dpo.beta", ["> 0.0"]),
    ("qlora.quant_type=int4", "qlora.quant_type", ["nf4, fp4"]),
    ("data.eval_fraction=1.5", "data.eval_fraction", ["<= 0.9"]),
    ("lora.dropout=1", "lora.dropout", ["< 1.0"]),
    ("lora.target_modules=[]", "lora.target_modules", ["all-linear"]),
    ("model=", "model", ["must be str"]),
])
def test_invalid_values_name_the_field_and_allowed_values(override, field, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert msg.startswith(field + ":"), msg
    for w in words:
        assert w in msg, msg


def test_unknown_fields_are_rejected_by_name(tmp_path):
    with pytest.raises(ConfigError, match=r"^train.stepz: unknown field"):
        load_config(None, ["train.stepz=3"])
    p = tmp_path / "c.yaml"
    p.write_text("method: lora\nlora: {rank: 4}\n")
    with pytest.raises(ConfigError, match=r"^lora.rank: unknown field; known fields: alpha, dropout, r"):
        load_config(p)


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("method: [lora\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)


def test_overrides_parse_values_as_yaml():
    cfg = apply_overrides(RunConfig(), ["train.max_steps=7", "lora.target_modules=[q_proj, v_proj]",
                                        "data.completion_only=false"])
    assert cfg.train.max_steps == 7
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.completion_only is False
    with pytest.raises(ConfigError, match="expected FIELD=VALUE"):
        apply_overrides(RunConfig(), ["train.max_steps"])


def test_every_shipped_config_loads_and_its_data_fits_its_method():
    from pathlib import Path

    from tunelab.data import load_examples
    root = Path(__file__).resolve().parents[1]
    shipped = sorted((root / "configs").glob("*.yaml"))
    assert {p.stem for p in shipped} >= {"full", "lora", "qlora", "dpo", "kto", "orpo"}
    for p in shipped:
        cfg = load_config(p)
        assert cfg.method == p.stem
        fmt, rows = load_examples(root / cfg.data.train, cfg.objective)
        assert rows, p
