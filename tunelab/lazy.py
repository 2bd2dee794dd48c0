"""`lazy("torch")`: a stand-in for a module that imports it on first attribute use.

The app's first page needs gradio and the workspace, not torch, transformers, PEFT,
bitsandbytes and TRL (~8 s of imports on a 2-core CPU). Core modules that the app's
tabs import at start (models, run, chat, estimate, teach) reach those libraries
through this, so they load when the first model, estimate or run needs them.
"""

from __future__ import annotations

import importlib


class LazyModule:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy(name: str) -> LazyModule:
    return LazyModule(name)
