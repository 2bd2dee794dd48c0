"""The app's run APIs for scripts (gradio_client), as the signed-in user:

    client = Client(url, auth=("ana", "her-password"))
    client.predict(run_id, api_name="/stop_run")
    client.predict(run_id, api_name="/resume_run")
    client.predict(run_id, title, api_name="/rename_run")
    client.predict(run_id, api_name="/delete_run")

Each calls the same method of the app's Jobs as the Runs tab's buttons (stop,
launch_resume, rename, delete) with the request's user, so the server decides who may (access.py: a
run's owner or an admin, with logins on); a refusal is an error naming whose run it is.
"""

from __future__ import annotations

import gradio as gr

from ..training.runfolder import RunError
from . import logic


class RunApi:
    """The four APIs over the app's `jobs` (service.jobs.Jobs); app.py registers the bound
    methods with gr.api."""

    def __init__(self, jobs):
        self.jobs = jobs

    def stop_run(self, run_id: str, request: gr.Request) -> dict:
        """Stop a training run (it saves and ends as "stopped") or cancel a queued one. Returns
        {"run_id", "stopping"}: stopping is false when the run was not running."""
        try:
            stopping = self.jobs.stop(str(logic.run_dir(run_id)), by=logic.user_of(request))
        except RunError as e:
            raise gr.Error(str(e)) from None
        return {"run_id": run_id, "stopping": stopping}

    def resume_run(self, run_id: str, request: gr.Request) -> dict:
        """Resume a run that ended (stopped, interrupted, failed) from its last checkpoint, or
        queue it; it stays its owner's run. Returns {"run_id", "queued"}."""
        try:
            self.jobs.launch_resume(str(logic.run_dir(run_id)), by=logic.user_of(request))
        except (RunError, OSError, ValueError) as e:
            raise gr.Error(str(e)) from None
        return {"run_id": run_id, "queued": self.jobs.queue_position(run_id) is not None}

    def rename_run(self, run_id: str, title: str, request: gr.Request) -> dict:
        """Set a run's title (1-80 characters; its id never changes). Returns {"run_id", "title"}."""
        try:
            stored = self.jobs.rename(str(logic.run_dir(run_id)), title, by=logic.user_of(request))
        except RunError as e:
            raise gr.Error(str(e)) from None
        return {"run_id": run_id, "title": stored}

    def delete_run(self, run_id: str, request: gr.Request) -> dict:
        """Delete a run's folder (not while it trains or waits in the queue). Returns {"run_id", "deleted"}."""
        try:
            self.jobs.delete(str(logic.run_dir(run_id)), by=logic.user_of(request))
        except (RunError, OSError) as e:
            raise gr.Error(str(e)) from None
        return {"run_id": run_id, "deleted": True}
