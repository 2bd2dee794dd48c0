"""What the Arena's "Models served elsewhere" panel does, without Gradio: list, add and remove
the OpenAI-compatible endpoints (tunelab/arena/endpoints.py). In a room with sign-in only an
admin changes them (an endpoint is a URL the server will call, for everyone's panes)."""

from __future__ import annotations

import html
import os

from ..arena.endpoints import Endpoint, EndpointError, EndpointStore
from ..service import access


def check_may_change(user: str | None) -> None:
    if not access.is_admin(user):
        raise EndpointError(f"only an admin adds or removes endpoints here ({user} is not in TUNELAB_ADMINS)")


def add(name: str, url: str, model: str, key_env: str, key: str, user: str | None) -> str:
    """Save the endpoint (a typed key stays in this process's memory); the sentence to show.
    EndpointError names the field that is wrong."""
    check_may_change(user)
    ep = EndpointStore().add(Endpoint(name or "", url or "", model or "", key_env or ""), key=key)
    return f"Added {ep.name}: pick it in either model picker. Its answers come from {ep.base_url}."


def remove(name: str | None, user: str | None) -> str:
    check_may_change(user)
    if not name:
        raise EndpointError("endpoint: pick the endpoint to remove")
    if not EndpointStore().remove(name):
        raise EndpointError(f"no endpoint named {name!r}")
    return f"Removed {name}. Labels already given to its answers keep its URL and model."


def names() -> list[str]:
    try:
        return [ep.name for ep in EndpointStore().all()]
    except EndpointError:
        return []


def key_text(store: EndpointStore, ep: Endpoint) -> str:
    if store.typed_key(ep.name):
        return "typed here (kept in memory until the app stops)"
    if ep.key_env:
        return f"${ep.key_env} ({'set' if os.environ.get(ep.key_env) else 'not set'})"
    return "none"


def table_html() -> str:
    """The endpoints as a small table (or why there are none)."""
    store = EndpointStore()
    try:
        eps = store.all()
    except EndpointError as e:
        return f'<div class="tl-msg tl-msg-error">{html.escape(str(e))}</div>'
    if not eps:
        return '<div class="tl-muted">No endpoints yet.</div>'
    rows = "".join(f"<tr><td>{html.escape(ep.name)}</td><td><code>{html.escape(ep.base_url)}</code></td>"
                   f"<td>{html.escape(ep.model)}</td><td>{html.escape(key_text(store, ep))}</td></tr>" for ep in eps)
    return (f'<table class="tl-table" id="arena-endpoints-table"><tr><th>Name</th><th>Base URL</th><th>Model</th>'
            f"<th>Key</th></tr>{rows}</table>")
