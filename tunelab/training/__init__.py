"""A run, from its config to a finished run folder, and the runs in the workspace.

    config.py       RunConfig: every field of a run (typed dataclasses, YAML, `--set` overrides, help text)
    run.py          run(config, on_event) and resume(run): the one run interface, exported as `tunelab.run`
    runfolder.py    a run folder's file names, status.json, RunError, a new run's id
    runs.py         the run registry: list, find, status, delete; export_source (tunelab/export/ writes exports)
    events.py       a run's events (events.jsonl): the writer and the reader
    callback.py     the trainer callback that turns TRL's logs into events and honours Stop
    pace.py         how long a run has left: the ETA from the pace of steps, evaluations and saves
    stopping.py     what a Stop does at each moment of a run process
    checkpoints.py  which checkpoints are complete; half-written ones dropped before a resume
    parallel.py     several processes training one run (accelerate launch, torchrun)
    estimate.py     trainable parameters and peak memory before a run starts
    memory.py       the gate: a run whose estimate is above the free memory is refused

How each method builds its model and trainer is in tunelab/methods/ (with heads.py: the output head
that scores only the answer tokens).
Nothing here imports gradio. Import the module you need: `from tunelab.training.runs import list_runs`.
"""
