"""Shared test setup: offline, a throwaway workspace, the bundled model, a tiny model.

The bundled SmolLM2 is converted from its GGUF file once (~45 s) into a cache that
outlives test sessions (`TUNELAB_TEST_CACHE`, default ~/.cache/tunelab-test) and is
symlinked into each session's workspace, so only the very first run pays for it.
"""

from __future__ import annotations

import os
from pathlib import Path

# Set before anything imports huggingface_hub / transformers / gradio: they read these at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# The arena in float32 (its default, pinned here in case a host's environment says
# otherwise): tests compare its logits with the plain model's; test_chat.py covers bf16.
os.environ.setdefault("TUNELAB_CHAT_DTYPE", "float32")


def _pin_this_worker() -> None:
    """Under pytest-xdist (`-n N`, as scripts/run.sh runs the suite), worker i of N keeps the
    i-th N-th of the cores, and whatever it starts (a training process, the app, Chromium)
    inherits that. torch and TuneLab size their thread pools from the cores a process may
    use (tunelab/common/cpushare.py `cores`), so two workers never run two pools that each
    want every core: such pools wait on each other at every operation (cpushare.py has the
    measurement). With more workers than cores the scheduler is left to share them."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cores, i, n = sorted(os.sched_getaffinity(0)), int(worker.removeprefix("gw")), int(count)
    if n <= len(cores):
        os.sched_setaffinity(0, cores[i * len(cores) // n:(i + 1) * len(cores) // n])


_pin_this_worker()   # before torch is imported: its OpenMP pool is sized once, at import

import pytest  # noqa: E402

from .browser_kit import browser  # noqa: E402, F401 (the fixture, for every browser test)

BUNDLED = "smollm2-135m-instruct"
CACHE = Path(os.environ.get("TUNELAB_TEST_CACHE", "~/.cache/tunelab-test")).expanduser()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real-model or long tests (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped where none is visible (run them with -m gpu)")


def pytest_collection_modifyitems(config, items):
    """After pytest-randomly's shuffle: the files that hold a `slow` test go first (each
    keeping its shuffled place among them), so that under `-n N --dist loadfile` the long
    files start early and the workers end close together instead of one finishing a
    five-minute file alone."""
    long_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in long_files)


@pytest.fixture(autouse=True)
def signal_handlers_put_back():
    """A test that runs `tunelab train` in-process installs the run process's SIGTERM and SIGINT
    handlers (training/stopping.py `catch`); they must not outlive it into the next test."""
    import signal
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, handler in before.items():
        if signal.getsignal(s) is not handler:
            signal.signal(s, handler)


@pytest.fixture(scope="session", autouse=True)
def tunelab_home(tmp_path_factory) -> Path:
    """A fresh workspace for the session, so tests never touch ./workspace."""
    home = tmp_path_factory.mktemp("tunelab-home")
    os.environ["TUNELAB_HOME"] = str(home)
    _link_bundled(home)  # cheap when the cache already holds the converted model
    return home


def _link_bundled(home: Path) -> None:
    # Checked by hand, not via tunelab.modelio.models, so that sessions that never load a model skip importing torch.
    cached, link = CACHE / "models" / BUNDLED, home / "models" / BUNDLED
    complete = all((cached / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer_config.json"))
    if complete and not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(cached, target_is_directory=True)


@pytest.fixture(scope="session")
def bundled_model_dir(tunelab_home) -> str:
    """The converted bundled model (converted into the shared cache on first use),
    reachable by name from the session workspace."""
    from tunelab.modelio.models import ensure_bundled

    ensure_bundled(BUNDLED, root=CACHE / "models")
    _link_bundled(tunelab_home)
    return str(tunelab_home / "models" / BUNDLED)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_model_dir) -> str:
    """A tiny random Llama (≈3.2M parameters, most in the embedding) with SmolLM2's real
    tokenizer and chat template, saved as safetensors. Same shape rules as SmolLM2:
    grouped-query attention, tied input/output embeddings."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture
def sft_file(tmp_path):
    """A small SFT chat file (rows.SFT_ROWS)."""
    from .rows import SFT_ROWS, write_jsonl
    return write_jsonl(tmp_path / "sft.jsonl", SFT_ROWS)


@pytest.fixture
def dpo_file(tmp_path):
    """A small preference-pair file (rows.DPO_ROWS)."""
    from .rows import DPO_ROWS, write_jsonl
    return write_jsonl(tmp_path / "dpo.jsonl", DPO_ROWS)
