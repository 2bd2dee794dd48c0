"""Where and on how many threads the arena computes: its device, the dtype its models
load in, and the intra-op threads each generation thread uses (chat.py generates).
"""

from __future__ import annotations

import functools
import os

from ..modelio import loading
from ..common.lazy import lazy

torch = lazy("torch")  # imported on first use (see common/lazy.py)


def default_device() -> str:
    """Where the arena generates: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def chat_dtype(device: str):
    """The dtype arena models load in: TUNELAB_CHAT_DTYPE = float32, bfloat16, or auto
    (the default: bf16 where the device computes it natively, else float32). bf16 halves
    the weights' memory (the bundled base: 257 MB against 513) and, with the shared decode
    loop batching every user's answers, is faster on CPUs with AVX512-BF16 or AMX:
    measured on the 2-core machine (SmolLM2-135M, greedy, 64 tokens, the loop's thread),
    2 answers at once 61 against 57 tokens/s, 60 answers at once 544 against 257 tokens/s.
    Where bf16 is emulated (AVX2 only) it is many times slower, so auto keeps float32."""
    want = os.environ.get("TUNELAB_CHAT_DTYPE") or "auto"
    if want == "auto":
        return torch.bfloat16 if loading.bf16_supported(device) else torch.float32
    return torch.bfloat16 if want == "bfloat16" else torch.float32


def generation_threads(groups: int = 1) -> int:
    """Intra-op threads a generation thread uses: TUNELAB_ARENA_THREADS, or else the
    process's default (the core count) when one model generates and 1 each when several
    models generate at once.

    OpenMP (GNU libgomp, as in PyTorch's wheels) keeps a pool of worker threads for every
    thread that ever ran a multi-threaded op, and once the pools hold more threads than
    there are cores its workers stop spinning between ops. A decode step is some 1,000
    small ops, so then each one waits to wake a sleeping worker. Measured on a 2-core
    machine (fp32, base + LoRA rows in one batch): a 2-row step took 61-77 ms in a thread
    when no other thread had a pool, 135-280 ms when the main thread had one, 110-127 ms
    with 1 thread. So arena threads are short-lived (their pool goes with them), models
    load inside them, and the app keeps its other threads to 1 (`reserve_cores`)."""
    env = os.environ.get("TUNELAB_ARENA_THREADS", "")
    if env.strip():
        try:
            return max(1, int(env))
        except ValueError:
            pass
    return _default_threads() if groups == 1 else 1


def reserve_cores() -> None:
    """Run this process's other threads on one intra-op thread from now on, so that only
    arena generation threads keep OpenMP pools (see generation_threads). For the app; the
    core count seen before is still what generation uses."""
    _default_threads()
    torch.set_num_threads(1)


@functools.cache
def _default_threads() -> int:
    return torch.get_num_threads()
