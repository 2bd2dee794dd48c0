"""Who may do what to a run: runs belong to the people who started them.

    access.check(status, user, "stop")     # RunError naming whose run it is, or nothing
    access.may_change(status, user)         # stop, resume, delete, rename
    access.may_download(status, user)       # downloads: everyone, unless TUNELAB_DOWNLOADS=own
    access.whose_line(status, user)         # the line a page shows beside buttons it disabled

`user` is the signed-in name of the request (Gradio's `request.username`), or None: the
app has no login (one person on loopback, as docs/runs.md says: anyone here may touch any
run), or the call comes from the host's own terminal (the CLI). A run's owner is the
user who started it (`owner` in its status.json; None for a run started without a login
or from the CLI).

With logins on:
- a run's owner may stop, resume, delete and rename it, and so may an admin
  (TUNELAB_ADMINS="ana,bob"); a run with no owner is the host's: admins only;
- everyone may view, compare and chat with every run, and download it unless the host
  set TUNELAB_DOWNLOADS=own (then only its owner and the admins may).

The server asks this on every action, whatever the page sent (the buttons a user may not
press are also disabled, but that is only a courtesy). No gradio here.
"""

from __future__ import annotations

import os

from ..training.runfolder import RunError

ACTIONS = ("stop", "resume", "delete", "rename")


def admins() -> frozenset[str]:
    """The users named in TUNELAB_ADMINS (comma-separated)."""
    raw = os.environ.get("TUNELAB_ADMINS", "")
    return frozenset(u.strip() for u in raw.split(",") if u.strip())


def is_admin(user: str | None) -> bool:
    """The host: no login (user None: one person, or the CLI), or a user named in TUNELAB_ADMINS."""
    return user is None or user in admins()


def owner_of(status: dict) -> str | None:
    return status.get("owner") or None


def may_change(status: dict, user: str | None) -> bool:
    """Whether `user` may stop, resume, delete or rename the run whose status.json is `status`."""
    return is_admin(user) or owner_of(status) == user


def downloads_for_all() -> bool:
    """TUNELAB_DOWNLOADS: "all" (the default): anyone signed in may download any run; "own":
    only a run's owner and the admins."""
    raw = os.environ.get("TUNELAB_DOWNLOADS", "all").strip().lower() or "all"
    if raw not in ("all", "own"):
        raise ValueError(f"TUNELAB_DOWNLOADS must be 'all' or 'own' (got {raw!r})")
    return raw == "all"


def may_download(status: dict, user: str | None) -> bool:
    return downloads_for_all() or may_change(status, user)


def whose(status: dict) -> str:
    """'ana's run' or 'the host's run' (no owner: started without a login, or from the CLI)."""
    owner = owner_of(status)
    return f"{owner}'s run" if owner else "the host's run"


def _who_may(status: dict) -> str:
    """'only ana or an admin' (or 'only an admin' for the host's run)."""
    owner = owner_of(status)
    return f"only {owner} or an admin" if owner else "only an admin"


def whose_line(status: dict, user: str | None) -> str:
    """What a page says beside the buttons it disabled for `user`; "" when nothing is disabled."""
    if may_change(status, user):
        return ""
    what = "stop, resume, delete or rename it"
    if not may_download(status, user):
        what = "stop, resume, delete, rename or download it"
    return f"{status.get('run_id', 'This')} is {whose(status)}: {_who_may(status)} can {what}."


def check(status: dict, user: str | None, action: str) -> None:
    """Raise RunError when `user` may not `action` (one of ACTIONS, or "download") the run."""
    allowed = may_download(status, user) if action == "download" else may_change(status, user)
    if allowed:
        return
    raise RunError(f"{status.get('run_id', 'this run')} is {whose(status)}: {_who_may(status)} can {action} it "
                   f"(signed in as {user})")


def actor(user: str | None, cli: bool = False) -> str:
    """How a status.json records who did something (`stopped_by`): the signed-in name,
    "the host (CLI)" from a terminal, or "someone using the app" where the app has no login."""
    if user:
        return user
    return "the host (CLI)" if cli else "someone using the app"
