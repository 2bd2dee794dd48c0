"""Every setting TuneLab reads from the environment, in one table, and what the host should know.

The settings page of the docs (docs/settings.md) lists the same rows (a test keeps the two
and the code in step). The few settings that decide policy have their readers here; the rest are read
where they are used, and named in SETTINGS so that they are documented in one place.

    settings.allow_training()   # False when TUNELAB_ALLOW_TRAINING=0
    settings.max_trainings()    # how many runs may train at once (TUNELAB_MAX_TRAININGS)
    settings.notices()          # [(level, text)]: what the page should tell its users

No gradio here.
"""

from __future__ import annotations

import os
from pathlib import Path

# (name, default, meaning)
SETTINGS = [
    ("TUNELAB_HOME", "./workspace; /data/tunelab on a Space with persistent storage",
     "the workspace: runs, uploaded data, labels.db, converted models"),
    ("TUNELAB_HOST", "127.0.0.1 (a Space sets GRADIO_SERVER_NAME=0.0.0.0)", "the address the app listens on"),
    ("TUNELAB_PORT", "7860", "the port"),
    ("TUNELAB_AUTH", "none", "logins, user:password[,user:password]; required for any non-loopback address "
                             "or share link, except on a Space"),
    ("TUNELAB_AUTH_FILE", "none", "a file of logins, one user:password a line (# starts a comment)"),
    ("TUNELAB_ADMINS", "none", "users (comma-separated) who may stop, resume, rename and delete anyone's runs; "
                               "others only their own"),
    ("TUNELAB_DOWNLOADS", "all", "who may download a run's model with logins on: all, or own (its owner and "
                                 "the admins)"),
    ("TUNELAB_SHARE", "0", "1 makes a Gradio share link (needs a login)"),
    ("TUNELAB_DEFAULT_MODEL", "smollm2-135m-instruct", "the model the Train and Arena tabs start with"),
    ("TUNELAB_MODEL_DIRS", "none", "more folders (os.pathsep-separated) a model path typed in the app may point into"),
    ("TUNELAB_ALLOW_TRAINING", "1", "0 turns training off in the app (chat, labels and the Runs tab stay)"),
    ("TUNELAB_MAX_TRAININGS", "1", "how many runs train at once from the app; more wait in a queue"),
    ("TUNELAB_MAX_UPLOAD_MB", "200", "the largest upload (HTTP 413 above it) and data file read"),
    ("TUNELAB_STANDBY", "1", "0: no training process waiting with its imports done"),
    ("TUNELAB_TRAIN_NICE", "0", "the CPU priority (nice) of runs started from the app (10: the page and the "
                                "arena first, at the run's cost)"),
    ("TUNELAB_APP_PID", "set by the app", "not for users: the app's pid, set in the training processes it "
                                          "starts; they end with the app (a run as interrupted, resumable)"),
    ("TUNELAB_TRAIN_CORES", "half", "cores a run computes on while people chat (half, rounded up; a number; "
                                    "all: no split): the arena gets the rest, and the run every core again "
                                    "once the room is quiet"),
    ("TUNELAB_ARENA_MAX_MODELS", "3", "fully fine-tuned models kept in memory by the arena"),
    ("TUNELAB_ARENA_THREADS", "measured", "threads for arena generation (unset: each decode loop measures all "
                                           "cores against one and keeps the faster)"),
    ("TUNELAB_ARENA_MAX_ROWS", "64", "answers one model's shared decode loop writes at once; more wait in line"),
    ("TUNELAB_ARENA_IDLE_S", "5", "seconds a decode loop's thread waits for work before it ends"),
    ("TUNELAB_ARENA_CACHE_MB", "1024", "keys and values of finished answers each decode loop keeps for the "
                                       "next turn (0: none)"),
    ("TUNELAB_ENDPOINT_TIMEOUT_S", "60", "seconds the arena waits for an endpoint's next piece of answer before "
     "its pane shows an error"),
    ("TUNELAB_CHAT_USERS", "64", "chats and batches the app serves at once (each holds a worker thread)"),
    ("TUNELAB_CHAT_DTYPE", "float32", "dtype of arena models: float32, bfloat16 or auto (bf16 where "
                                         "the device computes it natively; faster, but answers shift)"),
]


def _flag(name: str, default: bool) -> bool:
    v = os.environ.get(name, "").strip().lower()
    if not v:
        return default
    return v not in ("0", "false", "no", "off")


def allow_training() -> bool:
    return _flag("TUNELAB_ALLOW_TRAINING", True)


def max_trainings() -> int:
    raw = os.environ.get("TUNELAB_MAX_TRAININGS", "").strip()
    try:
        n = int(raw) if raw else 1
    except ValueError:
        raise ValueError(f"TUNELAB_MAX_TRAININGS must be a whole number >= 1 (got {raw!r})") from None
    if n < 1:
        raise ValueError(f"TUNELAB_MAX_TRAININGS must be a whole number >= 1 (got {raw!r})")
    return n


def on_space() -> bool:
    """Running on a Hugging Face Space (the platform sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


def persistent(home: Path) -> bool:
    """On a Space, only /data survives a restart (when persistent storage is enabled)."""
    home = Path(home).resolve()
    data = Path("/data")
    return data.is_dir() and (home == data or data in home.parents)


def notices(home: Path, logins: bool) -> list[tuple[str, str]]:
    """What the page should say about where it runs: [(level 'warn' | 'info', text)]."""
    out = []
    if on_space() and not persistent(home):
        out.append(("warn", f"This Space keeps runs and labels in {home}, on ephemeral storage: they are lost "
                            "when the Space restarts. Enable persistent storage in the Space's settings (the "
                            "workspace then moves to /data/tunelab), or export what you need."))
    if on_space() and not logins:
        out.append(("warn", "This Space has no login: anyone who can open it can train, chat and label. "
                            "For a workshop, set TUNELAB_AUTH as a Space secret."))
    if not allow_training():
        out.append(("info", "Training is turned off on this server (TUNELAB_ALLOW_TRAINING=0): chat, "
                            "label and look at runs."))
    return out
