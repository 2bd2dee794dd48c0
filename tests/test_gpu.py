"""The same configs on a CUDA GPU. Marked `gpu` and skipped where no GPU is visible
(`pytest -m gpu` runs only these on a GPU machine)."""

import pytest
import torch

from tunelab import RunConfig, run
from tunelab.run import resolve_hardware

from .test_methods import tiny_cfg

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_auto_picks_the_gpu_and_bf16_where_it_has_it():
    hw = resolve_hardware(RunConfig.from_dict({"method": "lora", "train": {"precision": "auto"}}))
    assert hw.device == "cuda"
    assert hw.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_a_run_trains_on_the_gpu_and_reports_gpu_memory(tiny_model_dir, sft_file, method):
    torch.cuda.reset_peak_memory_stats()
    result = run(tiny_cfg(tiny_model_dir, sft_file, method, max_steps=2, precision="auto"))
    s = result.summary
    assert result.status == "finished" and s["device"] == "cuda" and s["steps"] == 2
    assert 0 < s["peak_memory_mb"] <= torch.cuda.max_memory_allocated() / 2**20 + 1   # GPU memory, not RSS
    if method == "qlora":   # bitsandbytes' CUDA 4-bit layers under the adapters
        import bitsandbytes as bnb
        layers = [m for m in result.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert layers and all(m.weight.device.type == "cuda" for m in layers)


def test_the_arena_generates_on_the_gpu(tiny_model_dir):
    from tunelab.chat import BASE, Arena, Request, Sampling, default_device
    assert default_device() == "cuda"
    arena = Arena(tiny_model_dir, device="cuda")
    msgs = [{"role": "user", "content": "Hi"}]
    *_, replies = arena.stream([Request(BASE, msgs, Sampling(temperature=0.0, max_new_tokens=4))])
    assert replies[0].done and replies[0].error is None and replies[0].tokens > 0
    model = arena.resolve(BASE)[0].model
    assert next(model.parameters()).device.type == "cuda"
