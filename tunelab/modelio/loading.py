"""Loading a model that `models.resolve_model` has found: the tokenizer, the weights in a
dtype on a device, 4-bit NF4/FP4 through bitsandbytes for QLoRA; and facts about a model
or the machine (parameter counts, native bf16).

    from tunelab.modelio.loading import load_model, load_tokenizer
    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct", quant={"quant_type": "nf4"})
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import functools
import importlib.util
import os
import sys
import threading
from pathlib import Path

from ..common.imports import one_at_a_time
from .models import ModelError, is_hub_id, offline, resolve_model

if TYPE_CHECKING:   # annotations only: torch is imported where it is used
    import torch


def load_tokenizer(name: str):
    """The model's tokenizer (never remote code), with a pad token.

    When a tokenizer has no pad token, eos pads: TRL builds its loss and completion
    masks from attention masks, not by comparing ids with pad, so the eos that ends
    a reply is still trained on. (SmolLM2 already pads with <|im_end|> = eos.)"""
    path = resolve_model(name)
    try:
        with one_at_a_time():   # a tokenizer's first load imports transformers' modules
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except ModelError:
        raise
    except Exception as e:
        raise _load_error(name, path, e) from e
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"the tokenizer of {name!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# One model built at a time in this process. Building one sets process-wide torch state for
# a moment (`with torch.device("meta")` swaps a global current device, and the default
# dtype is global too); two threads building at once (the arena's generation threads, the
# app's estimate) can leave the other's value behind for good, and every later model then
# comes out on the meta device ("Cannot copy out of meta tensor").
BUILD_LOCK = threading.RLock()


@functools.lru_cache(maxsize=4)
def cached_tokenizer(model_path: str):
    """`load_tokenizer`, kept for the app's quick token counts (the Data tab's histogram and
    the estimate's real batch): one copy per model, keyed by its resolved path."""
    return load_tokenizer(model_path)

_ATTENTIONS = threading.Lock()


def register_attention(name: str, function) -> str:
    """Make `name` an attention implementation transformers accepts at load time
    (`load_model(..., attn_implementation=name)`): `function` through
    `AttentionInterface.register`, with SDPA's mask builder through
    `AttentionMaskInterface.register`, so each call gets the mask SDPA would. Once per
    process and name; returns the name."""
    with one_at_a_time():
        from transformers import AttentionInterface, AttentionMaskInterface
    with _ATTENTIONS:
        if name not in AttentionInterface():
            AttentionMaskInterface.register(name, AttentionMaskInterface()["sdpa"])
            AttentionInterface.register(name, function)
    return name


def load_model(name: str, *, dtype: torch.dtype | None = None, quant: dict | None = None, device: str = "cpu",
               attn_implementation: str | None = None):
    """A causal LM from safetensors only, never remote code.

    `quant` = {"quant_type": "nf4"|"fp4", "double_quant": bool, "compute_dtype": torch.dtype}
    loads every Linear except lm_head as a bitsandbytes `Linear4bit` (QLoRA's frozen base;
    works on CPU with bitsandbytes >= 0.48 too). `device` "cuda" places the model on the GPU.
    `attn_implementation`: an attention function's name as transformers knows it (one
    registered with `AttentionInterface.register` too); None: transformers' default."""
    path = resolve_model(name)
    device = _check_device(device)
    kwargs = dict(dtype=_as_dtype(dtype, "dtype"), use_safetensors=True, trust_remote_code=False)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quant:
        kwargs["quantization_config"] = _bnb_config(quant, kwargs["dtype"])
    if quant or device != "cpu":
        # device_map loads straight onto the device; bitsandbytes needs it to quantize while loading.
        kwargs["device_map"] = {"": device}

    try:
        with one_at_a_time():
            from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, AutoModelForCausalLM
            # Looking the model's class up imports its module (modeling_llama, ...), which
            # transformers would otherwise do lazily inside from_pretrained, outside this lock.
            MODEL_FOR_CAUSAL_LM_MAPPING.get(type(AutoConfig.from_pretrained(path, trust_remote_code=False)), None)
        with BUILD_LOCK:
            return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ModelError:
        raise
    except Exception as e:
        raise _load_error(name, path, e) from e


def _check_device(device: str) -> str:
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"unknown device {device!r}: use 'cpu' or 'cuda'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but no CUDA GPU is visible: use 'cpu'")
    return str(dev)


def _as_dtype(value, field: str) -> torch.dtype:
    import torch
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype):
        return value
    dt = getattr(torch, str(value).replace("torch.", ""), None)
    if not isinstance(dt, torch.dtype):
        raise ModelError(f"{field}: unknown dtype {value!r} (use float32, bfloat16 or float16)")
    return dt


def _bnb_config(quant: dict, dtype: torch.dtype):
    quant_type = quant.get("quant_type", "nf4")
    if quant_type not in ("nf4", "fp4"):
        raise ModelError(f"quant_type: {quant_type!r} is not one of nf4, fp4")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("4-bit loading needs bitsandbytes: run `pip install bitsandbytes`")
    with one_at_a_time():
        from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=bool(quant.get("double_quant", True)),
        # The dtype the 4-bit weights are dequantized to for each matmul.
        bnb_4bit_compute_dtype=_as_dtype(quant.get("compute_dtype") or dtype, "compute_dtype"),
    )


def _load_error(name: str, path: str, e: Exception) -> ModelError:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    reason = (lines[0] if lines else type(e).__name__)[:300]
    if not Path(path).exists() and is_hub_id(path):
        hint = " (HF_HUB_OFFLINE is set)" if offline() else ""
        return ModelError(f"could not load model {name!r} from the hub (offline?){hint}: {reason}")
    return ModelError(f"could not load model {name!r} from {path}: {reason}")


# --------------------------------------------------------------------------- facts about a model or machine


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, as weights, not storage elements.

    A bitsandbytes Params4bit packs two 4-bit weights per byte of its storage dtype,
    so its numel() undercounts by 2 * element_size (the rule PEFT's
    get_nb_trainable_parameters uses). Tied weights are counted once."""
    trainable = total = 0
    for p in model.parameters():  # parameters() already skips the second name of a tied weight
        n = p.numel()
        if n == 0 and hasattr(p, "ds_numel"):  # DeepSpeed ZeRO-3 keeps the real size aside
            n = p.ds_numel
        if p.__class__.__name__ == "Params4bit":
            n *= 2 * p.element_size()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


# ATEN_CPU_CAPABILITY values that hold torch's CPU kernels below AVX-512 (so below its bf16 instructions)
HELD_BELOW_AVX512 = {"default", "avx2", "avx"}


def bf16_supported(device: str) -> bool:
    """Whether `device` computes bf16 natively (so bf16 autocast speeds training up).

    CUDA: compute capability >= 8.0 (Ampere), no emulation. CPU: AVX512-BF16 or AMX
    (x86) or the BF16 extension (Arm). On CPUs without them PyTorch emulates bf16 and
    autocast is many times slower than float32."""
    if str(device).split(":")[0] == "cpu":
        return _cpu_native_bf16()   # told without importing torch where the CPU's flags say it
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        return False
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if dev.type == "cpu":
        return _cpu_native_bf16()
    return False


def _cpu_native_bf16() -> bool:
    if os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower() in HELD_BELOW_AVX512:
        return False   # torch's kernels held to AVX2 or less: bf16 is emulated there, whatever the CPU has
    if cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"}:
        return True
    if "torch" not in sys.modules:   # the flags said no; torch is not imported just to be asked again
        return False
    import torch
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):  # private, so guarded
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:
            pass
    return False


# torch's own rule (ATen's DispatchStub): ATEN_CPU_CAPABILITY is taken at its word; otherwise
# AVX-512 kernels need these four extensions, AVX2 kernels AVX2 and FMA.
ATEN_CAPABILITIES = ("default", "avx2", "avx512")
X86_AVX512 = {"avx512vl", "avx512bw", "avx512dq", "fma"}
X86_AVX2 = {"avx2", "fma"}


def cpu_capability() -> str:
    """The kernels torch runs on this CPU, lower-case as torch.backends.cpu.get_cpu_capability()
    names them ("avx512", "avx2", "default", …). On x86 it is told from the environment and
    /proc/cpuinfo, without importing torch (the app's first page asks); elsewhere, and once
    torch is imported, torch itself answers."""
    import platform
    if "torch" in sys.modules or platform.machine().lower() not in ("x86_64", "amd64"):
        import torch
        return torch.backends.cpu.get_cpu_capability().lower().replace(" ", "-")
    held = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if held in ATEN_CAPABILITIES:
        return held
    flags = cpu_flags()
    return "avx512" if X86_AVX512 <= flags else "avx2" if X86_AVX2 <= flags else "default"


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86 says "flags", Arm says "Features"
            flags.update(line.split(":", 1)[-1].split())
    return flags
