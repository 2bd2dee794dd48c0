"""Models served elsewhere, as arena contestants: any OpenAI-compatible chat-completions
endpoint (vLLM serving a run's LoRA adapters, llama-server or Ollama serving its GGUF
export, `transformers serve`, a hosted model).

    store = EndpointStore()                        # <workspace>/endpoints.json
    store.add(Endpoint("vllm", "http://127.0.0.1:8000/v1", "pirate", key_env="VLLM_KEY"))
    arena.stream([Request("endpoint:vllm", msgs, s), Request("base", msgs, s)])

What is saved is the name, the base URL, the model name and the *name* of the environment
variable that holds the key: never a key. A key typed in the app is kept in this process's
memory only (`EndpointStore.set_key`), and no key is ever logged or written into a label. The
only thing sent to an endpoint is the conversation of the pane and its sampling settings.

An endpoint's failure (refused, slow, an HTTP error, a stream that is not chat-completions
chunks) is its own pane's error; the other pane and the labels are not touched.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from ..common import workspace

PREFIX = "endpoint:"          # "endpoint:<name>" is an endpoint's source key in the arena
FILE = "endpoints.json"
CONNECT_TIMEOUT_S = 10.0      # to open the connection
READ_TIMEOUT_S = 60.0         # the longest wait for the next piece (TUNELAB_ENDPOINT_TIMEOUT_S)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class EndpointError(ValueError):
    """An endpoint that cannot be added or used; the message names the field or the endpoint."""


@dataclass(frozen=True)
class Endpoint:
    name: str                  # what the pickers show, unique in the workspace
    base_url: str              # http(s)://host[:port]/v1 (a bare host gets /v1)
    model: str                 # the model name the server knows (its /v1/models id)
    key_env: str = ""          # the environment variable holding the API key ("" = no key)

    def checked(self) -> Endpoint:
        """A copy with the URL normalised; EndpointError naming the field that is wrong."""
        name, model, key_env = self.name.strip(), self.model.strip(), self.key_env.strip()
        if not _NAME.match(name):
            raise EndpointError(f"name: {self.name!r} is not a usable name (1-40 letters, digits, '.', '-', '_')")
        if not model or len(model) > 200 or any(ord(c) < 32 for c in model):
            raise EndpointError("model: give the model name the server serves (1-200 characters)")
        if key_env and not _ENV.match(key_env):
            raise EndpointError(f"key variable: {self.key_env!r} is not an environment variable name")
        return Endpoint(name, normalise_url(self.base_url), model, key_env)

    @property
    def source(self) -> str:
        return PREFIX + self.name

    def provenance(self) -> dict:
        """What a label on one of its answers records about where the answer came from."""
        return {"endpoint_url": self.base_url, "endpoint_model": self.model}


def normalise_url(url: str) -> str:
    """The base URL an OpenAI client takes (`.../v1`), or EndpointError: http(s) only, a host,
    no user or password in it, no query or fragment."""
    raw = (url or "").strip()
    try:
        parts = urlsplit(raw)
        parts.port   # raises on a port that is not a number
    except ValueError as e:
        raise EndpointError(f"base URL: {raw!r} is not a URL ({e})") from None
    if parts.scheme not in ("http", "https"):
        raise EndpointError(f"base URL: {raw!r} must start with http:// or https://")
    if not parts.hostname:
        raise EndpointError(f"base URL: {raw!r} names no host")
    if parts.username or parts.password:
        raise EndpointError("base URL: no user or password in the URL; put the key in an environment variable")
    if parts.query or parts.fragment:
        raise EndpointError(f"base URL: {raw!r} has a query or fragment; give the server's base URL only")
    path = parts.path.rstrip("/")
    for tail in ("/chat/completions", "/completions"):
        if path.endswith(tail):
            path = path[: -len(tail)]
    return f"{parts.scheme}://{parts.netloc}{path or '/v1'}"


class EndpointStore:
    """The workspace's endpoints (endpoints.json, written whole and atomically), and the keys
    typed in this process (memory only)."""

    _keys: dict[str, str] = {}          # name -> key typed in the app: this process only
    _lock = threading.Lock()

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else workspace.home() / FILE

    def all(self) -> list[Endpoint]:
        if not self.path.is_file():
            return []
        try:
            rows = json.loads(self.path.read_text(encoding="utf-8"))
            return [Endpoint(**{k: str(r.get(k, "")) for k in ("name", "base_url", "model", "key_env")})
                    for r in rows]
        except (ValueError, TypeError, AttributeError) as e:
            raise EndpointError(f"{self.path}: not a list of endpoints ({e}); fix or delete the file") from None

    def get(self, name: str) -> Endpoint:
        for ep in self.all():
            if ep.name == name:
                return ep
        raise EndpointError(f"no endpoint named {name!r} (add it under 'Models served elsewhere')")

    def add(self, endpoint: Endpoint, key: str | None = None) -> Endpoint:
        """Save `endpoint` (replacing one of the same name); `key`, if given, is kept in memory."""
        ep = endpoint.checked()
        with self._lock:
            kept = [e for e in self.all() if e.name != ep.name]
            self._write(kept + [ep])
        self.set_key(ep.name, key)
        return ep

    def remove(self, name: str) -> bool:
        with self._lock:
            before = self.all()
            kept = [e for e in before if e.name != name]
            if len(kept) == len(before):
                return False
            self._write(kept)
        self.set_key(name, None)
        return True

    def set_key(self, name: str, key: str | None) -> None:
        if key and key.strip():
            self._keys[name] = key.strip()
        else:
            self._keys.pop(name, None)

    def typed_key(self, name: str) -> bool:
        """Whether a key for endpoint `name` was typed in this process."""
        return name in self._keys

    def key_for(self, ep: Endpoint) -> str | None:
        """The key typed in the app, else the one in the endpoint's environment variable."""
        return self._keys.get(ep.name) or (os.environ.get(ep.key_env) if ep.key_env else None) or None

    def _write(self, endpoints: list[Endpoint]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps([asdict(e) for e in endpoints], indent=1), encoding="utf-8")
        os.replace(tmp, self.path)


def read_timeout() -> float:
    """Seconds to wait for an endpoint's next piece of answer: TUNELAB_ENDPOINT_TIMEOUT_S, default 60."""
    raw = os.environ.get("TUNELAB_ENDPOINT_TIMEOUT_S", "").strip()
    try:
        value = float(raw) if raw else READ_TIMEOUT_S
    except ValueError:
        raise EndpointError(f"TUNELAB_ENDPOINT_TIMEOUT_S must be a number of seconds (got {raw!r})") from None
    if value <= 0:
        raise EndpointError(f"TUNELAB_ENDPOINT_TIMEOUT_S must be above 0 (got {raw!r})")
    return value


def choices(store: EndpointStore | None = None) -> list[tuple[str, str]]:
    """(label, source key) of every endpoint, for the model pickers; none when the file is unreadable."""
    try:
        return [(f"{ep.name} · endpoint ({ep.model})", ep.source) for ep in (store or EndpointStore()).all()]
    except EndpointError:
        return []


def stream_chat(ep: Endpoint, key: str | None, messages: list[dict], sampling: dict,
                on_text: Callable[[str], None], cancelled: Callable[[], bool],
                read_timeout_s: float | None = None) -> str:
    """Stream one answer from `ep`'s /chat/completions; call `on_text(piece)` for each piece of
    text as it comes. Returns why it ended ("stop", "length", or "cancelled"), or raises
    EndpointError with a sentence that names the endpoint (never the key)."""
    import httpx

    read_timeout_s = read_timeout_s or read_timeout()
    body = {"model": ep.model, "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "stream": True, "temperature": float(sampling["temperature"]), "top_p": float(sampling["top_p"]),
            "max_tokens": int(sampling["max_new_tokens"]), "seed": int(sampling["seed"])}
    headers = {"Accept": "text/event-stream"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    where = f"endpoint {ep.name} ({ep.base_url})"
    timeout = httpx.Timeout(connect=CONNECT_TIMEOUT_S, read=read_timeout_s, write=30.0, pool=CONNECT_TIMEOUT_S)
    finish = None
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client, \
                client.stream("POST", ep.base_url + "/chat/completions", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                text = resp.read().decode("utf-8", "replace").strip().replace("\n", " ")[:200]
                raise EndpointError(f"{where} answered HTTP {resp.status_code}" + (f": {text}" if text else ""))
            for line in resp.iter_lines():
                if cancelled():
                    return "cancelled"
                line = line.strip()
                if not line or line.startswith(":"):
                    continue
                if not line.startswith("data:"):
                    raise EndpointError(f"{where} sent something that is not a chat-completions stream: {line[:80]!r}")
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                piece, why = _chunk(data, where)
                if piece:
                    on_text(piece)
                finish = why or finish
    except httpx.TimeoutException:
        raise EndpointError(f"{where} did not answer within {read_timeout_s:g} s") from None
    except httpx.ConnectError as e:
        raise EndpointError(f"{where} could not be reached: {str(e)[:120] or 'connection refused'}") from None
    except httpx.HTTPError as e:
        raise EndpointError(f"{where} failed: {type(e).__name__}: {str(e)[:120]}") from None
    return "length" if finish == "length" else "stop"


def _chunk(data: str, where: str) -> tuple[str, str | None]:
    """(text, finish_reason) of one streamed chat-completions chunk."""
    try:
        obj = json.loads(data)
        err = obj.get("error")
        choice = obj["choices"][0] if obj.get("choices") else {}
        piece, why = (choice.get("delta") or {}).get("content") or "", choice.get("finish_reason")
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        raise EndpointError(f"{where} sent a malformed chunk: {data[:80]!r}") from None
    if err:
        raise EndpointError(f"{where} reported an error: {str(err.get('message', err) if isinstance(err, dict) else err)[:200]}")
    return piece, why


def serve_thread(ep: Endpoint, key: str | None, row: int, messages: list[dict], sampling: dict,
                 put: Callable[[str, int, object], None], cancelled: Callable[[], bool]) -> threading.Thread:
    """A thread streaming one pane's answer from `ep` as the arena's events: ("text", row,
    piece) for each piece, then ("done", row, "length"/"stop") or ("error", row, message)."""
    def run():
        try:
            why = stream_chat(ep, key, messages, sampling, lambda piece: put("text", row, piece), cancelled)
            put("done", row, why)
        except Exception as e:  # noqa: BLE001 — this pane's error, whatever it is
            put("error", row, str(e) if isinstance(e, EndpointError) else f"endpoint {ep.name}: {type(e).__name__}: {e}")
    t = threading.Thread(target=run, daemon=True, name=f"tunelab-endpoint-{ep.name}-{row}")
    t.start()
    return t
