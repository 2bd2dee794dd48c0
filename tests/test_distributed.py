"""`accelerate launch -m tunelab train`: data-parallel training in several processes, one run folder.

On this CPU-only machine accelerate runs the shipped DDP config over gloo (it reports
MULTI_CPU); FSDP and DeepSpeed need GPUs, so their configs are only checked to be
accelerate configs of the kind their names say.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.training.events import read_events
from tunelab.training.runs import run_status

from .rows import write_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"


def test_two_processes_train_one_run_to_completion(tiny_model_dir, tmp_path):
    cfg = write_config(tmp_path, tiny_model_dir, max_steps=4, batch_size=2, logging_steps=1)
    home = tmp_path / "home"
    env = os.environ | {"TUNELAB_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    accelerate = Path(sys.executable).with_name("accelerate")
    p = subprocess.run([str(accelerate), "launch", "--config_file", str(CONFIGS / "ddp.yaml"), "--num_processes", "2",
                        "-m", "tunelab", "train", str(cfg), "-q"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = sorted((home / "runs").iterdir())
    assert len(runs) == 1                                    # one folder, not one per process
    assert p.stdout.splitlines() == [f"run: {runs[0]}", str(runs[0])]   # printed once
    st = run_status(runs[0])
    assert st["status"] == "finished" and st["step"] == 4
    assert st["processes"] == 2 and st["parallel"] == "MULTI_CPU"      # DDP over gloo
    events = read_events(runs[0])
    assert [e["type"] for e in events].count("start") == 1
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4]
    assert (runs[0] / "model" / "adapter_model.safetensors").is_file()
    assert not (runs[0] / "model" / "training_args.bin").exists()   # no pickle beside the weights
    # batch 2 in each of 2 processes: 4 samples a step
    assert st["summary"]["samples_per_s"] == pytest.approx(4 * 4 / st["summary"]["wall_time_s"], rel=0.01)


@pytest.mark.parametrize("name, kind, extra", [
    ("ddp.yaml", "MULTI_GPU", {}), ("fsdp.yaml", "FSDP", {"fsdp_version": 2}),
    ("deepspeed_zero2.yaml", "DEEPSPEED", {"zero_stage": 2}), ("deepspeed_zero3.yaml", "DEEPSPEED", {"zero_stage": 3}),
])
def test_the_shipped_accelerate_configs(name, kind, extra):
    from accelerate.commands.config.config_args import ClusterConfig
    c = ClusterConfig.from_yaml_file(str(CONFIGS / name))
    assert c.distributed_type.value == kind and c.mixed_precision == "no"   # train.precision decides
    settings = {**(c.fsdp_config or {}), **(c.deepspeed_config or {})}
    for k, v in extra.items():
        assert settings[k] == v
    assert "accelerate launch --config_file configs/accelerate/" + name in (CONFIGS / name).read_text()
