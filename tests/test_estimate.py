"""The pre-run estimate: parameter counts equal what a real run reports, memory orders
the methods the way the QLoRA/LoRA/full story says, and on the bundled model the peak
lands near a measured one."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab import RunConfig, run
from tunelab.training.estimate import estimate, lora_targets, param_counts

BUNDLED = "smollm2-135m-instruct"
SFT_ROWS = [
    {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                  {"role": "assistant", "content": f"Arr, {a} plus {b} be {a + b}, matey!"}]}
    for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]
]
DPO_ROWS = [{"prompt": f"Name a colour number {i}.", "chosen": "Blue.",
             "rejected": "Well, there are many colours, and it depends."} for i in range(4)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def cfg_for(model, method, data="unused.jsonl", adapter="lora", **lora):
    return RunConfig.from_dict({
        "method": method, "model": model, "data": {"train": data},
        "train": {"max_steps": 1, "batch_size": 2, "max_length": 64, "precision": "fp32", "lr": 1e-4},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0} | lora, "dpo": {"adapter": adapter},
    })


@pytest.mark.parametrize("method, adapter, lora", [
    ("lora", "lora", {}),
    ("qlora", "lora", {"target_modules": ["q_proj", "v_proj"]}),
    ("dpo", "lora", {"r": 2}),
    ("dpo", "full", {}),
    ("full", "lora", {}),
])
def test_counts_equal_a_real_run(tiny_model_dir, tmp_path, method, adapter, lora):
    rows = DPO_ROWS if method == "dpo" else SFT_ROWS
    cfg = cfg_for(tiny_model_dir, method, write_jsonl(tmp_path / "d.jsonl", rows), adapter, **lora)
    e = estimate(cfg)
    s = run(cfg).summary
    assert (e["trainable_params"], e["total_params"]) == (s["trainable_params"], s["total_params"])
    assert e["trainable_pct"] == pytest.approx(s["trainable_pct"])
    assert e["device"] == s["device"] and e["precision"] == s["precision"] == "fp32"


def test_result_shape(tiny_model_dir):
    e = estimate(cfg_for(tiny_model_dir, "lora"))
    assert set(e) >= {"trainable_params", "total_params", "trainable_pct", "peak_memory_mb", "breakdown",
                      "device", "precision", "notes"}
    assert set(e["breakdown"]) == {"weights", "gradients", "optimizer", "activations", "reference", "overhead"}
    assert e["peak_memory_mb"] == pytest.approx(sum(e["breakdown"].values()))
    assert all(v >= 0 for v in e["breakdown"].values())
    assert e["notes"] and all(isinstance(n, str) and n for n in e["notes"])


def test_bundled_counts_and_ordering(bundled_model_dir):
    est = {m: estimate(cfg_for(BUNDLED, m)) for m in ("qlora", "lora", "full")}
    assert est["full"]["trainable_params"] == est["full"]["total_params"] == 134_515_008  # tied embedding once
    assert est["lora"]["trainable_params"] == est["qlora"]["trainable_params"] > 0
    assert est["lora"]["total_params"] == 134_515_008 + est["lora"]["trainable_params"]
    peak = {m: e["peak_memory_mb"] for m, e in est.items()}
    assert peak["qlora"] < peak["lora"] < peak["full"], peak
    b = {m: e["breakdown"] for m, e in est.items()}
    assert b["qlora"]["weights"] < b["lora"]["weights"] / 3  # 4-bit Linear weights
    assert b["full"]["optimizer"] == pytest.approx(2 * b["full"]["gradients"])  # two AdamW moments


def test_the_estimate_reads_no_weights(bundled_model_dir, tmp_path):
    """What makes it quick (~0.3-1 s on a 2-core machine, where loading takes ~10 s): it
    builds the model from config.json on the meta device. A copy of the bundled model
    whose weights file is garbage gets the very same estimate."""
    folder = tmp_path / "no-weights"
    folder.mkdir()
    for f in Path(bundled_model_dir).iterdir():
        if f.is_file() and f.name != "model.safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    real, hollow = (estimate(cfg_for(m, "lora", r=3)) for m in (BUNDLED, str(folder)))  # r=3: not cached
    for key in ("trainable_params", "total_params", "peak_memory_mb"):
        assert hollow[key] == real[key], key


def test_rank_sweep_is_linear(bundled_model_dir):
    counts = {r: estimate(cfg_for(BUNDLED, "lora", r=r))["trainable_params"] for r in (1, 4, 16, 64)}
    assert all(counts[r] == r * counts[1] for r in counts), counts
    # SmolLM2: 30 layers x (q, k, v, o, gate, up, down) -> r * sum(in + out)
    assert counts[1] == 30 * ((576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 2 + (1536 + 576))


def test_shape_fallback_matches_peft(bundled_model_dir):
    """Without PEFT the same count comes from the Linear shapes: r·(in + out) per adapted layer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunelab.modelio.models import resolve_model

    path = resolve_model(BUNDLED)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    head = model.get_output_embeddings()
    for targets in ("all-linear", ("q_proj", "v_proj"), ("down_proj",)):
        by_shape = sum(8 * (m.in_features + m.out_features) for m in lora_targets(model, targets, head))
        assert by_shape == param_counts(path, 8, targets)["lora_params"], targets


def test_memory_knobs_move_the_estimate(bundled_model_dir):
    def peak(method="lora", adapter="lora", **train):
        cfg = cfg_for(BUNDLED, method, adapter=adapter)
        for k, v in train.items():
            setattr(cfg.train, k, v)
        return estimate(cfg)

    base = peak()
    assert peak(gradient_checkpointing=True)["breakdown"]["activations"] < base["breakdown"]["activations"]
    assert peak(batch_size=8)["breakdown"]["activations"] > base["breakdown"]["activations"]
    dpo_lora, dpo_full = peak("dpo"), peak("dpo", adapter="full")
    # precompute_ref (the default) needs no reference copy; without it full DPO holds one
    assert dpo_lora["breakdown"]["reference"] == 0 == dpo_full["breakdown"]["reference"]
    cfg = cfg_for(BUNDLED, "dpo", adapter="full")
    cfg.dpo.precompute_ref = False
    assert estimate(cfg)["breakdown"]["reference"] > 0
    assert dpo_lora["breakdown"]["activations"] > base["breakdown"]["activations"]  # chosen + rejected
    assert peak(precision="bf16")["breakdown"]["weights"] < base["breakdown"]["weights"]


def test_kto_and_orpo_estimates_say_what_each_holds(bundled_model_dir):
    kto, orpo, dpo = (estimate(cfg_for(BUNDLED, m)) for m in ("kto", "orpo", "dpo"))
    assert kto["trainable_params"] == orpo["trainable_params"] == dpo["trainable_params"]   # the same LoRA
    assert kto["breakdown"]["reference"] == orpo["breakdown"]["reference"] == 0
    assert any("orpo: no reference model" in n for n in orpo["notes"])
    assert any("kto with adapters: the reference is the base with adapters off" in n for n in kto["notes"])
    assert any("KL estimate" in n for n in kto["notes"])
    # On a CPU ORPO's chosen and rejected go through the same scored head as DPO's pairs
    assert orpo["breakdown"]["activations"] == dpo["breakdown"]["activations"]
    assert kto["breakdown"]["activations"] < dpo["breakdown"]["activations"]   # one answer a row, not two
    full = cfg_for(BUNDLED, "kto", adapter="full")
    full.kto.adapter, full.kto.precompute_ref = "full", False
    assert estimate(full)["breakdown"]["reference"] > 0


@pytest.mark.slow
def test_calibration_lora_on_bundled_model(bundled_model_dir, tmp_path):
    """Two real LoRA steps (batch 4, every row truncated to 128 tokens) in a fresh process,
    so ru_maxrss is this run's alone; the estimate must be within ±50% of it."""
    text = " ".join(f"Arr, the sea be wide and number {i} be a fine number to count upon." for i in range(20))
    rows = [{"messages": [{"role": "user", "content": f"Tell me a long story {i}."},
                          {"role": "assistant", "content": text}]} for i in range(8)]
    cfg = RunConfig.from_dict({"method": "lora", "model": BUNDLED,
                               "data": {"train": write_jsonl(tmp_path / "long.jsonl", rows)},
                               "train": {"max_steps": 2, "batch_size": 4, "max_length": 128, "precision": "fp32"}})
    cfg.save(tmp_path / "cfg.yaml")
    code = ("import json, sys; from tunelab import RunConfig, run; "
            "print(json.dumps(run(RunConfig.from_yaml(sys.argv[1])).summary))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cfg.yaml")], capture_output=True,
                         text=True, timeout=900, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])["peak_memory_mb"]
    estimated = estimate(cfg)["peak_memory_mb"]
    assert 0.5 * measured <= estimated <= 1.5 * measured, (estimated, measured)


# --------------------------------------------------------------------------- the batch that really runs

def _rows(n):
    """SFT rows of different lengths: row i's answer has i + 1 words."""
    return [{"messages": [{"role": "user", "content": f"Count to {i}."},
                          {"role": "assistant", "content": " ".join(["arr"] * (i + 1))}]} for i in range(n)]


def _batch_trl_builds(cfg, tmp_path):
    """The shape of the first batch the run's own trainer (TRL, through tunelab.run) yields."""
    import importlib

    from tunelab import data as data_mod
    from tunelab.modelio import loading
    run_mod = importlib.import_module("tunelab.training.run")   # the module (tunelab.run is also the function)

    hw = run_mod.resolve_hardware(cfg)
    train_rows, _ = run_mod._load_data(cfg)
    model, peft_config = run_mod._method(cfg.method).load(cfg, hw)
    make = run_mod._method(cfg.method).make_trainer if cfg.adapter else run_mod._sft_trainer
    trainer = make(cfg, hw, model, peft_config, loading.load_tokenizer(cfg.model), data_mod.to_dataset(train_rows),
                   None, run_mod._common_args(cfg, hw, tmp_path, False), [])
    return tuple(next(iter(trainer.get_train_dataloader()))["input_ids"].shape)


def test_batch_100000_on_43_rows_is_estimated_as_the_43_it_is(tiny_model_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir, "lora", write_jsonl(tmp_path / "d.jsonl", _rows(48)))
    cfg.data.eval_fraction = 0.1            # 48 rows: 5 held out, 43 train
    cfg.train.max_length = 4096
    cfg.train.batch_size = 100_000
    huge = estimate(cfg)
    cfg.train.batch_size = 43
    real = estimate(cfg)
    assert huge["batch_size"] == real["batch_size"] == 43
    assert huge["peak_memory_mb"] == real["peak_memory_mb"]
    assert any("43, not 100000" in n and "after the eval split" in n for n in huge["notes"])
    cfg.train.batch_size = 42
    assert estimate(cfg)["peak_memory_mb"] < real["peak_memory_mb"]  # below the rows, the batch still counts

    # What TRL really builds: one batch of all 43 rows, padded to the longest of them, not to max_length.
    cfg.train.batch_size = 100_000
    assert _batch_trl_builds(cfg, tmp_path) == (huge["batch_size"], huge["seq_length"])
    assert huge["seq_length"] < 4096 and any("longest training row" in n for n in huge["notes"])


def test_max_length_below_the_longest_row_is_the_length(tiny_model_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir, "lora", write_jsonl(tmp_path / "d.jsonl", _rows(12)))
    cfg.train.max_length, cfg.train.batch_size = 40, 12
    e = estimate(cfg)
    assert (e["batch_size"], e["seq_length"]) == (12, 40) == _batch_trl_builds(cfg, tmp_path)
    cfg.train.max_length = 41
    assert estimate(cfg)["peak_memory_mb"] > e["peak_memory_mb"]


def test_dpo_batch_is_at_most_the_pairs(tiny_model_dir, tmp_path):
    pairs = [{"prompt": f"Name colour {i}.", "chosen": "Blue.", "rejected": " ".join(["well"] * (i + 3))}
             for i in range(6)]
    cfg = cfg_for(tiny_model_dir, "dpo", write_jsonl(tmp_path / "p.jsonl", pairs))
    cfg.train.batch_size, cfg.train.max_length = 1000, 4096
    e = estimate(cfg)
    assert e["batch_size"] == 6
    rows, length = _batch_trl_builds(cfg, tmp_path)   # chosen and rejected of every pair, one padded length
    assert (rows, length) == (2 * e["batch_size"], e["seq_length"])


def test_unreadable_data_leaves_the_config_values(tiny_model_dir):
    e = estimate(cfg_for(tiny_model_dir, "lora", "no-such-file.jsonl"))
    assert (e["batch_size"], e["seq_length"]) == (2, 64)
    assert any("the data was not read" in n for n in e["notes"])
