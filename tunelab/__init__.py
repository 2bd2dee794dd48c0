"""TuneLab core: one run interface for full fine-tuning, LoRA, QLoRA and DPO.

    from tunelab import RunConfig, run
    result = run(RunConfig.from_dict({"method": "lora", "train": {"max_steps": 20}}))

Never imports gradio: the app, the CLI, notebooks and tests all sit on top of this.
"""

from .training.config import ConfigError, RunConfig, load_config
from .training.run import RunResult, resume, run
from .training.runfolder import RunError

__all__ = ["RunConfig", "ConfigError", "load_config", "run", "resume", "RunResult", "RunError"]
__version__ = "0.1.0"
