"""Whether the Hugging Face hub answers from this machine: asked once, remembered, never waited on long.

    hub.reachable()            # True / False when known, None while the first check runs
    hub.require("org/name")    # ModelError at once when a hub id cannot be fetched from here

Hub ids (`org/name`) are offered in the app's model pickers, estimated and trained only
where the hub answers. Without a network, transformers retries each request for ~20 s
before it fails (a user saw the picker hang 23 s and a run fail 70 s after Start), so it
is no way to find out. One HEAD request to the hub with a short timeout is: it runs in a
background thread, its answer is kept for a while (a laptop may come online later), and
a page never waits on it. HF_HUB_OFFLINE=1 means offline without asking. HF_ENDPOINT (a
mirror) is asked instead of huggingface.co where it is set, as huggingface_hub does.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

TIMEOUT_S = 3.0
# How long an answer holds: a failure is asked again sooner than a success.
TTL_S = {True: 600.0, False: 60.0}

_lock = threading.Lock()
_answer: dict = {"ok": None, "at": 0.0}
_thread: threading.Thread | None = None


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def offline_by_setting() -> bool:
    from .models import offline
    return offline()


def needs_hub(name: str) -> bool:
    """Whether loading `name` means asking the hub: a hub id that is neither a bundled
    model nor a local folder."""
    from . import models
    name = str(name or "").strip()
    return models.is_hub_id(name) and not models.bundled_key(name) and not Path(name).expanduser().exists()


def probe() -> bool:
    """One HEAD request. Any HTTP answer below 500 (even 401 or 404) means the hub is there."""
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint(), method="HEAD"), timeout=TIMEOUT_S):
            return True
    except urllib.error.HTTPError as e:
        return e.code < 500
    except (OSError, ValueError):  # no route, no DNS, refused, timed out, a malformed HF_ENDPOINT
        return False


def _check() -> None:
    ok = probe()
    with _lock:
        _answer.update(ok=ok, at=time.monotonic())


def reachable(wait: float = 0.0) -> bool | None:
    """True or False when known; None while the first check is still under way. A stale
    answer starts a new check in the background and is returned meanwhile. `wait`: seconds
    to wait for a check in flight (0: never wait)."""
    global _thread
    if offline_by_setting():
        return False
    with _lock:
        ok, at = _answer["ok"], _answer["at"]
        fresh = ok is not None and time.monotonic() - at < TTL_S[ok]
        if not fresh and (_thread is None or not _thread.is_alive()):
            _thread = threading.Thread(target=_check, daemon=True, name="tunelab-hub-check")
            _thread.start()
        thread = _thread
    if not fresh and wait > 0 and thread is not None:
        thread.join(wait)
        with _lock:
            ok = _answer["ok"]
    return ok


def forget() -> None:
    """Drop the remembered answer (tests; a host who just fixed the network)."""
    with _lock:
        _answer.update(ok=None, at=0.0)


def require(name: str) -> None:
    """ModelError now, instead of a minute of retries later, when `name` is a hub id that
    is neither a bundled model, a local folder nor already in the hub cache, and the hub
    does not answer from this machine."""
    from . import models
    name = str(name or "").strip()
    if not needs_hub(name):
        return
    if models.in_hub_cache(name) or reachable(wait=TIMEOUT_S + 0.5):
        return
    why = ("HF_HUB_OFFLINE is set" if offline_by_setting()
           else f"{endpoint()} did not answer within {TIMEOUT_S:.0f} s")
    raise models.ModelError(f"model {name!r} is a Hugging Face hub id, and the hub cannot be reached from this "
                            f"machine ({why}): choose the bundled model ({models.DEFAULT_MODEL}) or a local "
                            f"model folder")
