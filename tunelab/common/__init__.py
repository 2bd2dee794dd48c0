"""What every part of TuneLab uses.

    workspace.py   where TuneLab keeps its files: TUNELAB_HOME with runs/, models/, data/, labels.db
    lazy.py        `lazy("torch")`: heavy libraries imported on first use, so the app starts fast

Import the module you need: `from tunelab.common import workspace`.
"""
