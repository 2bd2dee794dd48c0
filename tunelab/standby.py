"""`python -m tunelab.standby`: a training process started ahead of time that becomes `tunelab <argv>`.

How a standby preloads, waits and takes a run over is tunelab/service/standby.py. This entry
point sits beside the CLI, at the top of the layers, and hands the CLI's `main` to
`standby.serve`: the service layer never imports the command line.
"""

import sys

from .service import standby


def run_cli(argv: list[str]) -> int:
    """The `tunelab` command line in this process, as `python -m tunelab <argv>` runs it."""
    from .__main__ import main   # imported once a run is handed over, as a cold start would
    return main(argv)


if __name__ == "__main__":
    sys.exit(standby.serve(run_cli))
