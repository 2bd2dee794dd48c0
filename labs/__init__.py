"""The lab cards' tools, run from the repository root: `python -m labs.measure` (every card
once, its check, the README table) and `python -m labs.matrix` (each check across CPUs)."""
