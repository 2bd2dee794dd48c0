"""RunError: what a run, or a command on a run (resume, export, delete), reports to its user.

It lives here, below every layer that raises it (training, export) or shows it (the service,
the UI, the CLI); `tunelab.training.runfolder` re-exports it, where most code imports it from.
"""


class RunError(RuntimeError):
    """A run failed, or cannot do what was asked; the message is the one-line reason shown to the user."""
