"""One model the arena holds in memory: a base, with the adapters of the runs trained on it
loaded under their own PEFT names, or a fully fine-tuned run (see tunelab/arena/chat.py).
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..common.imports import import_serially
from ..modelio import loading, models
from .decoding import eos_ids


class Entry:
    """One model in memory: a base (with any adapters loaded into it) or a full run."""

    def __init__(self, model, tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.adapters: dict[str, str] = {}   # run_id -> adapter name inside the PEFT model
        self.lock = threading.Lock()         # one forward at a time per model (a loop step, a teach view)
        self.eos = eos_ids(model, tokenizer)

    def adapter_name(self, run_id: str, path: Path) -> str:
        """Load the run's adapter into this base once; return its PEFT name."""
        if run_id in self.adapters:
            return self.adapters[run_id]
        import_serially(("peft",))   # a first import of peft, not alongside another thread's
        from peft import PeftModel
        from safetensors import safe_open
        name = f"a{len(self.adapters)}"  # PEFT names are module keys: keep them plain
        weights = models.check_adapter(path) / "adapter_model.safetensors"
        try:   # a damaged file fails here, before the model is touched
            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except Exception as e:  # noqa: BLE001
            raise models.ModelError(f"{weights}: not a readable safetensors file ({e})") from None
        with loading.BUILD_LOCK:   # see loading.BUILD_LOCK
            try:
                if not self.adapters:
                    self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name,
                                                           is_trainable=False)
                else:
                    self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
            except Exception as e:
                self._undo_adapter(name)   # the base and the other adapters answer as before
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                detail = next((ln for ln in lines if "size mismatch" in ln), lines[0] if lines else type(e).__name__)
                raise models.ModelError(f"{path}: the adapter does not load onto its base: {detail}") from e
        self.model.eval()
        self.adapters[run_id] = name
        return name


    def _undo_adapter(self, name: str) -> None:
        """Take out what a failed adapter load left behind: its layers in a PEFT model, or
        the LoRA layers PEFT put into the plain base before the weights failed."""
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
        if isinstance(self.model, PeftModel):
            if name in self.model.peft_config:
                self.model.delete_adapter(name)
            return
        for parent in list(self.model.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, LoraLayer):
                    setattr(parent, child_name, child.get_base_layer())
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config


def adapter_of(entry: Entry, spec) -> str | None:
    """A seat's adapter spec as the PEFT adapter name its rows run with (loading it)."""
    if isinstance(spec, tuple):
        with entry.lock:   # the base may become a PEFT model here
            return entry.adapter_name(*spec)
    return spec
