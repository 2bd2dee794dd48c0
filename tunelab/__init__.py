"""TuneLab core: one run interface for six methods: full fine-tuning, LoRA, QLoRA, DPO, KTO and ORPO.

    from tunelab import RunConfig, run
    result = run(RunConfig.from_dict({"method": "lora", "train": {"max_steps": 20}}))

The app, the CLI, notebooks and tests all sit on top of this. Only the app's tabs
(tunelab/ui/) and app.py import gradio.
"""

from .training.config import ConfigError, RunConfig, load_config
from .training.run import RunResult, resume, run
from .training.runfolder import RunError

__all__ = ["RunConfig", "ConfigError", "load_config", "run", "resume", "RunResult", "RunError"]
__version__ = "0.1.0"
