"""Who may reach the app: localhost by default, a login required for anything wider.

    host = bind_host()                      # TUNELAB_HOST / GRADIO_SERVER_NAME, else 127.0.0.1
    auth = required_auth(host, share)       # [(user, password), ...] or None; raises HostingError

The app listens on 127.0.0.1 unless told otherwise. Listening on any other address, or
asking Gradio for a public share link (TUNELAB_SHARE=1), is refused unless a login is
configured: TUNELAB_AUTH="user:password" (several separated by commas), or
TUNELAB_AUTH_FILE naming a file with one "user:password" a line (a line starting with #
is a comment).
A login configured for a local app is used too. On a Hugging Face Space (SPACE_ID set)
the app may start without one: the Space's own visibility is the gate, and the page
warns that it has no login (settings.notices). No gradio here: app.py passes the result
to `launch(auth=...)`.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class HostingError(ValueError):
    """A setting that would expose the app without a login, or a malformed login."""


def bind_host() -> str:
    env = os.environ.get
    return (env("TUNELAB_HOST") or env("GRADIO_SERVER_NAME") or "127.0.0.1").strip()


def share_requested() -> bool:
    return os.environ.get("TUNELAB_SHARE", "").strip().lower() in ("1", "true", "yes", "on")


def is_local(host: str) -> bool:
    """True for loopback addresses (127.0.0.0/8, ::1) and localhost; False for 0.0.0.0,
    :: (every interface) and anything else."""
    h = host.strip().strip("[]").lower()
    if h in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _pairs(lines: list[str], where: str, numbered: bool) -> list[tuple[str, str]]:
    """user:password pairs; blank lines and lines starting with # are skipped (a # inside
    a password is kept). The password may itself contain ':'."""
    out = []
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            at = f"{where}, line {n}" if numbered else where
            raise HostingError(f"{at}: expected user:password (both non-empty)")
        out.append((user.strip(), password))
    return out


def configured_auth() -> list[tuple[str, str]] | None:
    """The logins from TUNELAB_AUTH and TUNELAB_AUTH_FILE, or None when neither is set."""
    logins: list[tuple[str, str]] = []
    inline = os.environ.get("TUNELAB_AUTH", "").strip()
    if inline:
        logins += _pairs(inline.split(","), "TUNELAB_AUTH", numbered=False)
    file = os.environ.get("TUNELAB_AUTH_FILE", "").strip()
    if file:
        path = Path(file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise HostingError(f"TUNELAB_AUTH_FILE {path}: cannot read it ({type(e).__name__})") from e
        found = _pairs(text.splitlines(), f"TUNELAB_AUTH_FILE {path}", numbered=True)
        if not found:
            raise HostingError(f"TUNELAB_AUTH_FILE {path}: no user:password line in it")
        logins += found
    return logins or None


def required_auth(host: str | None = None, share: bool | None = None) -> list[tuple[str, str]] | None:
    """The login list to launch with. Raises HostingError when the app would be reachable
    from other machines (a non-loopback address or a share link) with no login set."""
    host = bind_host() if host is None else host
    share = share_requested() if share is None else share
    logins = configured_auth()
    # On a Space the platform's proxy is the only way in and the Space's visibility (public
    # or private) decides who gets there; the page says when it has no login of its own.
    if not share and os.environ.get("SPACE_ID") and not logins:
        return None
    if (share or not is_local(host)) and not logins:
        what = "a public share link (TUNELAB_SHARE)" if share else f"listening on {host}"
        raise HostingError(
            f"{what} lets other machines reach the app, so it needs a login: set TUNELAB_AUTH=user:password "
            "or TUNELAB_AUTH_FILE=<file with user:password lines> (or bind to 127.0.0.1)")
    return logins
