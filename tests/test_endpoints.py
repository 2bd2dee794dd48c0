"""Models served elsewhere as arena contestants (tunelab/arena/endpoints.py): the URL and
store rules, a pane streamed from an OpenAI-compatible server beside a local one, each way an
endpoint can fail (in its own pane only), and a real `transformers serve` on the bundled model
whose answers are voted on and trained on."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from tunelab.arena import endpoints
from tunelab.arena.chat import BASE, Arena, Request, Sampling
from tunelab.arena.endpoints import Endpoint, EndpointError, EndpointStore, normalise_url

from .openai_fake import FakeServer
from .waiting import wait_for

MSGS = [{"role": "user", "content": "Say hello like a pirate."}]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    yield tmp_path / "home"
    EndpointStore().set_key("fake", None)


# --------------------------------------------------------------------------- rules

@pytest.mark.parametrize("url, problem", [
    ("ftp://127.0.0.1/v1", "must start with http:// or https://"),
    ("file:///etc/passwd", "must start with http:// or https://"),
    ("localhost:8000", "must start with http:// or https://"),
    ("http:///v1", "names no host"),
    ("http://ana:secret@127.0.0.1:8000/v1", "no user or password"),
    ("http://127.0.0.1:8000/v1?key=1", "query or fragment"),
    ("http://127.0.0.1:port/v1", "is not a URL"),
])
def test_a_bad_url_is_refused_with_the_reason(url, problem):
    with pytest.raises(EndpointError, match="base URL: .*" + problem.split(" ")[0]):
        normalise_url(url)


@pytest.mark.parametrize("url, base", [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
    (" https://models.example/v1/ ", "https://models.example/v1"),
    ("http://127.0.0.1:8000/v1/chat/completions", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:11434/api/v1", "http://127.0.0.1:11434/api/v1"),
])
def test_a_base_url_is_normalised_as_openai_clients_take_it(url, base):
    assert normalise_url(url) == base


def test_the_store_keeps_endpoints_but_never_a_key(home, monkeypatch):
    store = EndpointStore()
    ep = store.add(Endpoint("fake", "http://127.0.0.1:9/v1", "pirate", key_env="FAKE_KEY"), key="sk-typed-secret")
    assert store.all() == [ep] and store.get("fake").model == "pirate"
    saved = (home / endpoints.FILE).read_text()
    assert "sk-typed-secret" not in saved and "FAKE_KEY" in saved
    assert store.key_for(ep) == "sk-typed-secret"          # typed: this process's memory
    store.set_key("fake", None)
    monkeypatch.setenv("FAKE_KEY", "sk-from-env")
    assert store.key_for(ep) == "sk-from-env"               # else the variable it names
    assert ("fake · endpoint (pirate)", "endpoint:fake") in endpoints.choices()
    assert store.remove("fake") and store.all() == [] and not store.remove("fake")


@pytest.mark.parametrize("ep, field", [
    (Endpoint("../up", "http://127.0.0.1/v1", "m"), "name"),
    (Endpoint("ok", "http://127.0.0.1/v1", " "), "model"),
    (Endpoint("ok", "http://127.0.0.1/v1", "m", key_env="NOT-A-VAR"), "key variable"),
    (Endpoint("ok", "gopher://127.0.0.1/v1", "m"), "base URL"),
])
def test_a_bad_field_names_itself_and_saves_nothing(home, ep, field):
    store = EndpointStore()
    store.add(Endpoint("kept", "http://127.0.0.1:9/v1", "m"))
    with pytest.raises(EndpointError, match=f"^{field}:"):
        store.add(ep)
    assert [e.name for e in store.all()] == ["kept"]


def test_an_unreadable_store_names_its_file(home):
    (home / endpoints.FILE).parent.mkdir(parents=True, exist_ok=True)
    (home / endpoints.FILE).write_text("{not json")
    with pytest.raises(EndpointError, match="endpoints.json: not a list of endpoints"):
        EndpointStore().all()
    assert endpoints.choices() == []     # the pickers still show the base and the runs


# --------------------------------------------------------------------------- a fake server

@pytest.fixture
def fake():
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def arena(tiny_model_dir):
    return Arena(tiny_model_dir)


def last(stream):
    out = None
    for out in stream:
        pass
    return out


def test_an_endpoint_streams_into_its_pane_beside_a_local_model(home, fake, arena, monkeypatch):
    EndpointStore().add(Endpoint("fake", fake.url, "pirate", key_env="FAKE_KEY"))
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    sampling = Sampling(temperature=0.0, max_new_tokens=8, seed=3)
    grew = []
    for replies in arena.stream([Request("endpoint:fake", MSGS, sampling), Request(BASE, MSGS, sampling)]):
        grew.append(replies[0].text)
    remote, local = replies
    assert remote.done and remote.error is None and remote.text == "Ahoy matey!" and not remote.cut
    assert remote.tokens == 3 and remote.first_token_s is not None
    assert [t for t in grew if t] [0] in ("Ahoy", "Ahoy matey", "Ahoy matey!")   # it grew, piece by piece
    assert remote.provenance == {"endpoint_url": fake.url, "endpoint_model": "pirate"}
    assert local.done and local.error is None and local.tokens > 0
    (sent,) = fake.requests
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sk-test"
    assert sent["body"] == {"model": "pirate", "messages": MSGS, "stream": True, "temperature": 0.0, "top_p": 0.9,
                            "max_tokens": 8, "seed": 3}   # the conversation and its sampling, nothing else


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("model, problem", [
    ("slow", "did not answer within 0.5 s"),
    ("garbage", "sent something that is not a chat-completions stream|sent a malformed chunk"),
    ("http500", "answered HTTP 500"),
    ("refused", "could not be reached"),
])
def test_a_failing_endpoint_fails_only_its_own_pane(home, fake, arena, monkeypatch, model, problem):
    url = f"http://127.0.0.1:{closed_port()}/v1" if model == "refused" else fake.url
    EndpointStore().add(Endpoint("fake", url, model))
    monkeypatch.setenv("TUNELAB_ENDPOINT_TIMEOUT_S", "0.5")
    sampling = Sampling(temperature=0.0, max_new_tokens=6)
    remote, local = last(arena.stream([Request("endpoint:fake", MSGS, sampling), Request(BASE, MSGS, sampling)]))
    assert remote.done and remote.error and "endpoint fake (" in remote.error
    assert re.search(problem, remote.error), remote.error
    assert local.done and local.error is None and local.tokens > 0


def test_an_endpoint_not_in_the_store_is_that_panes_error(home, arena):
    remote, local = last(arena.stream([Request("endpoint:gone", MSGS, Sampling(max_new_tokens=4)),
                                       Request(BASE, MSGS, Sampling(max_new_tokens=4))]))
    assert "no endpoint named 'gone'" in remote.error and local.error is None


# --------------------------------------------------------------------------- a real serving engine

@pytest.fixture
def transformers_serve(bundled_model_dir, tmp_path):
    """`transformers serve` on the bundled model, on a free localhost port."""
    port = closed_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", bundled_model_dir,
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"HF_HUB_OFFLINE": "1"})

    def up():
        if proc.poll() is not None:
            raise AssertionError("transformers serve ended: " + (tmp_path / "serve.log").read_text()[-2000:])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False
    wait_for(up, "transformers serve listening")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def test_transformers_serve_answers_in_the_arena_and_its_labels_train_dpo(home, transformers_serve, bundled_model_dir,
                                                                        tiny_model_dir, arena):
    from tunelab import run
    from tunelab.arena.labelruns import dpo_run_config
    from tunelab.ui import arena_logic as al

    EndpointStore().add(Endpoint("serve", transformers_serve, bundled_model_dir), key="sk-never-stored")
    # The other pane: the tiny random model, sampled (greedy, it may answer only blank lines).
    samplings = [Sampling(temperature=0.0, max_new_tokens=12), Sampling(temperature=1.0, max_new_tokens=12, seed=1)]
    for prompt in ("Name a colour.", "Name a fruit."):
        msgs = [{"role": "user", "content": prompt}]
        replies = last(arena.stream([Request("endpoint:serve", msgs, samplings[0]), Request(BASE, msgs, samplings[1])]))
        assert all(r.error is None and r.text.strip() for r in replies), [(r.error, r.text) for r in replies]
        pair = al.make_pair([msgs, msgs], [r.text for r in replies], ["endpoint:serve", BASE], samplings,
                            False, provenance=[r.provenance for r in replies])
        al.save_vote(pair, "a", "served", "ana")
    label = al.store().labels("served")[0]
    assert label["source_a"]["model"] == "endpoint:serve"
    assert label["source_a"]["endpoint_url"] == transformers_serve + "/v1"
    assert label["source_a"]["endpoint_model"] == bundled_model_dir
    assert b"sk-never-stored" not in (home / "labels.db").read_bytes()

    cfg, counts = dpo_run_config(al.store(), "served", model=tiny_model_dir, max_steps=1)
    assert counts["written"] == 2
    result = run(cfg)
    assert result.status == "finished" and result.summary["steps"] == 1


def test_only_an_admin_changes_endpoints_in_a_room_with_sign_in(home, monkeypatch):
    from tunelab.ui import endpoints_logic as el
    monkeypatch.setenv("TUNELAB_ADMINS", "ada")
    with pytest.raises(EndpointError, match="only an admin"):
        el.add("x", "http://127.0.0.1:9", "m", "", "", "bob")
    assert "Added x" in el.add("x", "http://127.0.0.1:9", "m", "", "sk-typed", "ada")
    shown = el.table_html()
    assert "http://127.0.0.1:9/v1" in shown and "typed here" in shown and "sk-typed" not in shown
    assert el.names() == ["x"]
    with pytest.raises(EndpointError, match="only an admin"):
        el.remove("x", "bob")
    assert "Removed x" in el.remove("x", None) and el.names() == []   # None: the host, no sign-in


def test_the_runs_tab_says_how_to_serve_a_run_on_each_engine(tmp_path):
    from tunelab.ui.runs_logic import serve_commands
    lora, full = tmp_path / "r-lora", tmp_path / "r-full"
    (lora / "model").mkdir(parents=True)
    (lora / "model" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/m/base", "r": 8}))
    (full / "model").mkdir(parents=True)
    said = "\n".join(serve_commands({"run_id": "r-lora", "path": str(lora)}))
    assert f"vllm serve /m/base --enable-lora --lora-modules r-lora={lora / 'model'} --max-lora-rank 8" in said
    assert "transformers serve merged-r-lora" in said        # it cannot load an adapter folder: the merged model
    assert "llama-server -m gguf-r-lora/*.gguf" in said and "ollama create r-lora -f gguf-r-lora/Modelfile" in said
    said = "\n".join(serve_commands({"run_id": "r-full", "path": str(full)}))
    assert f"transformers serve {full / 'model'} --host 127.0.0.1" in said and "--enable-lora" not in said
    assert serve_commands({"run_id": "r-none", "path": str(tmp_path / "r-none")}) == []   # no saved model
