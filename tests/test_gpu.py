"""The same configs on each device: the CPU always, a CUDA GPU where one is visible.

Every test runs its body once per device. The `cuda` case is marked `gpu` and skipped
where no GPU is visible (`pytest -m gpu` runs only those, on a GPU machine); the `cpu`
case runs everywhere, so a broken fixture, import or code path here fails CI on a CPU
machine instead of waiting, unseen, for the next GPU. Assertions that only mean
something on a GPU (CUDA `Linear4bit`, GPU memory) stay in the `cuda` case.
"""

import pytest
import torch

from tunelab import RunConfig, run
from tunelab.modelio import loading
from tunelab.training.run import resolve_hardware

from .rows import tiny_cfg

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu,
                                              pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")])]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


def test_auto_picks_the_gpu_and_the_fastest_precision_the_device_has(device):
    # On the GPU `auto` must choose it; on the CPU it is named (auto would pick the GPU there).
    want = "auto" if device == "cuda" else "cpu"
    hw = resolve_hardware(RunConfig.from_dict({"method": "lora", "train": {"device": want, "precision": "auto"}}))
    assert hw.device == device
    if device == "cuda":
        assert hw.precision == ("bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16")
    else:   # native bf16 (AVX512-BF16, AMX) or fp32; emulated bf16 is many times slower
        assert hw.precision == ("bf16" if loading.bf16_supported("cpu") else "fp32")


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_a_run_trains_on_the_device_and_reports_its_memory(tiny_model_dir, sft_file, method, device):  # noqa: F811
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = run(tiny_cfg(tiny_model_dir, sft_file, method, max_steps=2, precision="auto", device=device))
    s = result.summary
    assert result.status == "finished" and s["device"] == device and s["steps"] == 2
    assert s["peak_memory_mb"] > 0
    if method == "qlora":   # bitsandbytes' 4-bit layers under the adapters, on the run's device
        import bitsandbytes as bnb
        layers = [m for m in result.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert layers and all(m.weight.device.type == device for m in layers)
    if device == "cuda":    # GPU memory (tensors), not the process's resident memory
        assert s["peak_memory_mb"] <= torch.cuda.max_memory_allocated() / 2**20 + 1


def test_the_arena_generates_on_the_device(tiny_model_dir, device):
    from tunelab.arena.chat import BASE, Arena, Request, Sampling
    from tunelab.arena.chatdevice import default_device
    assert default_device() == ("cuda" if HAS_CUDA else "cpu")
    arena = Arena(tiny_model_dir, device=device)
    msgs = [{"role": "user", "content": "Hi"}]
    *_, replies = arena.stream([Request(BASE, msgs, Sampling(temperature=0.0, max_new_tokens=4))])
    assert replies[0].done and replies[0].error is None and replies[0].tokens > 0
    model = arena.resolve(BASE)[0].model
    assert next(model.parameters()).device.type == device
