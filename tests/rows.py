"""What the tests write, shared by test modules (which never import each other): SFT
chats, DPO pairs and `write_jsonl`; one example of every data format and what it must
become; the tiny run configs; finished run folders made without training (`make_run`).

Heavy imports (torch, transformers, pandas) happen inside the helpers that need them."""

import json

import pytest

SFT_ROWS = [
    {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                  {"role": "assistant", "content": f"Arr, {a} plus {b} be {a + b}, matey!"}]}
    for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (9, 1), (4, 4), (6, 3)]
]
DPO_ROWS = [
    {"prompt": f"Name a colour number {i}.", "chosen": "Blue.",
     "rejected": "Well, there are many colours one might name, and it depends on many things."}
    for i in range(4)
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ---------------------------------------------------------------------------
# Every data format: one row each, and exactly what it must become (test_data.py,
# test_data_errors.py)

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731

# One row of each format, and exactly what it must become.
EXAMPLES = {
    "messages": (
        {"messages": [S("Be brief."), U("Capital of France?"), A("Paris.")]},
        {"prompt": [S("Be brief."), U("Capital of France?")], "completion": [A("Paris.")]},
    ),
    "prompt_completion": (
        {"prompt": "What is 2+2?", "completion": "4."},
        {"prompt": [U("What is 2+2?")], "completion": [A("4.")]},
    ),
    "alpaca": (
        {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        {"prompt": [U("Translate to French.\n\ncat")], "completion": [A("chat")]},
    ),
    "sharegpt": (
        {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                           {"from": "gpt", "value": "Hello!"}]},
        {"prompt": [S("Be kind."), U("Hi")], "completion": [A("Hello!")]},
    ),
    "preference": (
        {"prompt": "Boiling point of water?", "chosen": "100 °C at sea level.", "rejected": "Hard to say."},
        {"prompt": [U("Boiling point of water?")], "chosen": [A("100 °C at sea level.")],
         "rejected": [A("Hard to say.")]},
    ),
    "sharegpt_preference": (
        {"conversations": [{"from": "human", "value": "Hi"}],
         "chosen": {"from": "gpt", "value": "Hello!"}, "rejected": {"from": "gpt", "value": "What?"}},
        {"prompt": [U("Hi")], "chosen": [A("Hello!")], "rejected": [A("What?")]},
    ),
    "unpaired": (
        {"prompt": "Boiling point of water?", "completion": "100 °C at sea level.", "label": True},
        {"prompt": [U("Boiling point of water?")], "completion": [A("100 °C at sea level.")], "label": True},
    ),
    "messages_unpaired": (
        {"messages": [U("Capital of France?"), A("Lyon."), U("Sure?"), A("Paris.")], "label": False},
        {"prompt": [U("Capital of France?"), A("Lyon."), U("Sure?")], "completion": [A("Paris.")], "label": False},
    ),
}


def write(tmp_path, name, rows):
    """Write `rows` to tmp_path/name in the type its extension names."""
    path = tmp_path / name
    ext = path.suffix
    if ext == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif ext == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif ext == ".csv":
        import pandas as pd
        cells = [{k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()} for r in rows]
        pd.DataFrame(cells).to_csv(path, index=False)
    elif ext == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_text(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def objective(fmt):
    from tunelab.data import formats
    return formats.objective_of(fmt)


def flipped(example: dict) -> dict:
    """The same row or example with its label turned over (KTO needs both kinds)."""
    return {**example, "label": not example["label"]}


def error_of(fn, *args):
    """The message of the DataError `fn(*args)` raises (the test fails if it raises none)."""
    from tunelab.data import DataError
    with pytest.raises(DataError) as info:
        fn(*args)
    return str(info.value)


# ---------------------------------------------------------------------------
# Tiny runs: configs for the tiny test model, and finished run folders made by hand


def tiny_cfg(model_dir, data, method, **train):
    """A 3-step run of `method` on `data` (fp32, batch 4, rows cut at 64 tokens, LoRA r=4)."""
    from tunelab import RunConfig
    t = {"max_steps": 3, "batch_size": 4, "lr": 1e-3, "max_length": 64, "precision": "fp32"} | train
    return RunConfig.from_dict({"method": method, "model": model_dir, "data": {"train": data},
                                "train": t, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}})


def lora_cfg(model, data, **train):
    """A 3-step LoRA run with the method's default adapter settings."""
    from tunelab import RunConfig
    t = {"max_steps": 3, "batch_size": 4, "lr": 1e-3, "max_length": 64, "precision": "fp32"} | train
    return RunConfig.from_dict({"method": "lora", "model": model, "data": {"train": data}, "train": t})


def base_weights(model_dir):
    from safetensors.torch import load_file
    return load_file(f"{model_dir}/model.safetensors")


def check_run_folder(result, method, steps=3):
    """A finished run's folder is complete: config, status, events, summary, safetensors."""
    from tunelab.training.events import read_events
    d = result.run_dir
    assert (d / "config.yaml").is_file() and (d / "status.json").is_file()
    status = json.loads((d / "status.json").read_text())
    assert status["status"] == "finished" and status["method"] == method
    kinds = [e["type"] for e in read_events(d)]
    assert kinds[0] == "start" and kinds[-1] == "finish" and "step" in kinds
    step = next(e for e in read_events(d) if e["type"] == "step")
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s", "eta_s"):
        assert key in step, key
    s = result.summary
    for key in ("trainable_params", "total_params", "peak_memory_mb", "wall_time_s", "tokens_per_s",
                "final_loss", "final_eval_loss"):
        assert key in s, key
    assert s["steps"] == steps
    files = {p.name for p in (d / "model").iterdir()}
    assert not any(f.endswith((".bin", ".pt")) for f in files)
    return files


def tiny_model(tiny_model_dir, ours: bool = False):
    """The tiny test model, loaded fresh in float32; with `ours`, with the attention
    TuneLab's methods load their models with (tunelab/methods/attention.py), else with
    transformers' default."""
    import torch
    from transformers import AutoModelForCausalLM
    kwargs = {}
    if ours:
        from tunelab.methods import attention
        kwargs["attn_implementation"] = attention.register()
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, **kwargs)


MSGS = [{"role": "user", "content": "Say something about ships."}]


def make_run(model_dir: str, run_id: str, kind: str = "lora", seed: int = 1, runs_root=None) -> str:
    """A finished run folder (in `runs_root`, default this session's workspace; name it
    like a real run id, <date>-<time>-<name>, so it sorts by age among them) holding a
    visibly different model: a LoRA adapter with non-zero B (a fresh adapter is an exact
    no-op), or a perturbed full copy."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab import RunConfig
    from tunelab.common import workspace

    run_dir = (runs_root or workspace.runs_dir()) / run_id
    (run_dir / "model").mkdir(parents=True)
    cfg = RunConfig.from_dict({"method": kind if kind in ("lora", "qlora") else "full", "model": model_dir,
                               "data": {"train": "labs/data/pirate_sft.jsonl"}})
    cfg.save(run_dir / "config.yaml")
    (run_dir / "status.json").write_text(json.dumps({"run_id": run_id, "status": "finished",
                                                     "method": cfg.method, "model": model_dir}))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if kind in ("lora", "qlora"):  # the same adapter weights: a qlora run's only differ in the base it expects
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
    else:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(run_dir / "model")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(run_dir / "model")
    return run_id


def write_config(tmp_path, model_dir, method="lora", **train):
    """A small run config for `method` on `model_dir` with its data file, as YAML in tmp_path."""
    import yaml

    data = write_jsonl(tmp_path / f"{method}.jsonl", DPO_ROWS if method == "dpo" else SFT_ROWS)
    t = {"max_steps": 4, "batch_size": 4, "lr": 1e-3, "max_length": 64, "precision": "fp32"} | train
    cfg = {"method": method, "model": model_dir, "data": {"train": data}, "train": t,
           "lora": {"r": 4, "alpha": 8}}
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
