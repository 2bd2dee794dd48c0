"""Hub models only where the hub answers: one quick check in the background, remembered,
never blocking; a hub id that cannot be fetched is refused at once by Start and the
estimate. Nothing here contacts the real hub: the probe is replaced, or pointed at a
server on 127.0.0.1."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from tunelab import RunConfig
from tunelab.modelio import hub, models
from tunelab.service.jobs import Jobs
from tunelab.common import workspace
from tunelab.training.estimate import estimate, wait_note
from tunelab.ui import logic

from .rows import SFT_ROWS, write_jsonl

HUB_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.fixture
def probe(monkeypatch):
    """HF_HUB_OFFLINE unset, nothing remembered, and a probe whose answer the test sets."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "in_hub_cache", lambda repo_id: False)
    state = {"ok": False, "answer": threading.Event(), "calls": 0}
    state["answer"].set()   # the probe answers at once unless a test clears this

    def fake():
        state["answer"].wait(120)   # a test holds the answer back; the ceiling only guards a hang
        state["calls"] += 1
        return state["ok"]
    monkeypatch.setattr(hub, "probe", fake)
    hub.forget()
    yield state
    state["answer"].set()
    if hub._thread is not None:
        hub._thread.join(120)
    hub.forget()


def test_hf_hub_offline_means_offline_without_asking(monkeypatch, probe):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    probe["ok"] = True
    assert hub.reachable(wait=1) is False and probe["calls"] == 0
    assert not set(logic.ONLINE_MODELS) & set(logic.model_choices(wait=1))


def test_hub_models_are_offered_only_where_the_hub_answers(probe):
    assert not set(logic.ONLINE_MODELS) & set(logic.model_choices(wait=1))   # no answer from the hub
    hub.forget()
    probe["ok"] = True
    choices = logic.model_choices(wait=1)
    assert choices[0] == logic.default_model() and set(logic.ONLINE_MODELS) <= set(choices)


def test_the_check_never_blocks_and_is_asked_once(probe):
    probe["ok"] = True
    probe["answer"].clear()                              # the hub has not answered yet
    assert hub.reachable() is None                       # under way in the background
    assert HUB_MODEL not in logic.model_choices()        # a page load does not wait for it
    assert probe["calls"] == 0                           # both returned while the probe still waited
    probe["answer"].set()
    hub._thread.join(120)
    assert hub.reachable() is True and hub.reachable(wait=1) is True
    assert probe["calls"] == 1                           # remembered


def _serve(status: int):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(status)
            self.end_headers()

        def log_message(self, *a):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_probe_counts_any_answer_below_500_as_the_hub(monkeypatch):
    for status, answers in ((404, True), (200, True), (503, False)):
        server = _serve(status)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert hub.probe() is answers, status
        server.shutdown()
        server.server_close()
    with socket.socket() as s:              # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub.probe() is False


def test_a_hub_id_is_refused_at_once_when_the_hub_does_not_answer(probe, tiny_model_dir, tmp_path, monkeypatch):
    cfg = RunConfig.from_dict({"method": "lora", "model": HUB_MODEL,
                               "data": {"train": write_jsonl(tmp_path / "d.jsonl", SFT_ROWS)}})
    before = {d.name for d in workspace.runs_dir().iterdir()}
    with pytest.raises(models.ModelError, match=rf"model '{HUB_MODEL}' is a Hugging Face hub id, and the hub "
                                                r"cannot be reached from this machine \(https://huggingface.co "
                                                r"did not answer"):
        Jobs().launch(cfg)
    with pytest.raises(models.ModelError, match="cannot be reached"):
        estimate(cfg)                       # not the last model's figures: an error that says why
    assert probe["calls"] == 1              # both asked the one remembered check, not transformers' retries
    assert {d.name for d in workspace.runs_dir().iterdir()} == before
    assert wait_note(HUB_MODEL) is None     # nothing to wait for: the estimate fails at once

    hub.require("smollm2-135m-instruct")    # bundled, local folders and cached ids need no hub
    hub.require(tiny_model_dir)
    monkeypatch.setattr(models, "in_hub_cache", lambda repo_id: True)
    hub.require(HUB_MODEL)


def test_offline_by_setting_says_so(monkeypatch, probe):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelError, match=r"\(HF_HUB_OFFLINE is set\): choose the bundled model"):
        hub.require(HUB_MODEL)


def test_a_reachable_hub_id_shows_what_the_estimate_waits_for(probe):
    probe["ok"] = True
    assert hub.reachable(wait=1) is True
    hub.require(HUB_MODEL)
    assert wait_note(HUB_MODEL) == f"Reading the config of {HUB_MODEL} from the Hugging Face hub …"
