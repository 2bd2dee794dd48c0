"""What every part of TuneLab uses.

    workspace.py   where TuneLab keeps its files: TUNELAB_HOME with runs/, models/, data/, labels.db
    decoding.py    FAIR_SAMPLING and the answer length: the decoding the arena, the labs and exports share
    errors.py      RunError, raised by training and export, shown by the service, the UI and the CLI

Import the module you need: `from tunelab.common import workspace`.
"""
