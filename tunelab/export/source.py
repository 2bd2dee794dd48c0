"""What an export reads from a run, handed in by the layer that knows run folders.

The export package sits below `training/` (which writes and finds runs) and `arena/` (which
knows how a run was used): it never looks a run up itself. The caller builds an ExportSource,
usually with `tunelab.training.runs.export_source(ref)`, and the exports take it from there.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..common.errors import RunError


@dataclass
class ExportSource:
    """A run as an export sees it.

    run_dir      the run's folder (its name is the run's id)
    model_dir    its saved model: a full model, or a PEFT adapter (adapter_config.json)
    status       the run's status word ("finished", "stopped", "running", ...) or None
    summary      its summary (summary.json, or the one in status.json), {} where it has none
    read_config  returns the run's config (a `RunConfig`); called only once an export needs it,
                 so a run with no saved model is refused for that first
    """
    run_dir: Path
    model_dir: Path
    status: str | None
    summary: dict
    read_config: Callable[[], Any] = field(repr=False)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @functools.cached_property
    def cfg(self):
        """The run's config (`RunConfig`): its model, method, data and settings."""
        return self.read_config()

    @property
    def is_adapter(self) -> bool:
        return (self.model_dir / "adapter_config.json").is_file()

    def fail(self, why: str):
        """Refuse: RunError("<run id>: <why>")."""
        raise RunError(f"{self.name}: {why}")
