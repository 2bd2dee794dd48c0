"""The room view (who trains, who waits, each person's runs and labels, the machine) and the
Inside tab's line (one computation at a time, each waiter knowing its place), without gradio."""

from __future__ import annotations

import json
import threading
import time

import psutil
import pytest

from tunelab.arena.prefs import LabelStore
from tunelab.service import room
from tunelab.ui import room_logic
from tunelab.ui.inside_logic import Line, in_line, ordinal

from .waiting import wait_for

PROMPT = [{"role": "user", "content": "Hi?"}]


def until(cond, what: str):   # returns when cond() holds; the ceiling is only a hang guard
    wait_for(cond, what, every=0.01)


# --------------------------------------------------------------------------- the line

def test_the_line_is_first_come_first_served_with_exact_places():
    line = Line()
    a, b, c = line.join("lab check", "ana"), line.join("shading", "bob"), line.join("shading", "cy")
    assert [line.place(t) for t in (a, b, c)] == [0, 1, 2]
    line.leave(b)   # one in the middle gives up: those behind move up
    assert [line.place(t) for t in (a, c)] == [0, 1]
    d = line.join("lab check", "dee")
    line.leave(a)
    assert [line.place(t) for t in (c, d)] == [0, 1]
    line.leave(a)   # leaving twice is harmless
    assert line.tickets() == [c, d]
    with pytest.raises(RuntimeError, match="not at the front"):
        line.begin(d)


def test_wait_returns_when_the_turn_comes():
    line = Line()
    first, second = line.join("lab check"), line.join("shading")
    assert line.wait(second, 0) == 1
    got = []
    waiter = threading.Thread(target=lambda: got.append(line.wait(second, 60)))
    waiter.start()
    line.leave(first)
    waiter.join(60)
    assert got == [0]


def test_a_waiter_whose_page_stopped_asking_is_dropped_and_rejoins_at_the_back():
    now = [0.0]
    line = Line(stale_s=30, clock=lambda: now[0])
    a, b, c = line.join("lab check", "ana"), line.join("shading", "bob"), line.join("shading", "cy")
    line.begin(a)
    now[0] = 20.0
    assert line.place(c) == 2
    now[0] = 40.0   # b has not asked for 40 s, c for 20 s; a computes (never dropped)
    assert line.place(c) == 1 and line.tickets() == [a, c]
    assert line.place(b) == 2   # its page asks again: at the back
    now[0] = 1000.0
    assert line.place(b) == 1 and line.tickets() == [a, b]


def test_ordinals():
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"]


def test_in_line_waits_behind_another_computation_then_computes():
    line = Line()
    release = threading.Event()
    first = in_line("lab check", "ana", lambda: release.wait(60) and "ana's table", line=line, poll_s=0.01)
    assert next(first)[0] == "busy"   # nobody ahead: it computes at once
    second = in_line("shading", "bob", lambda: "bob's shading", line=line, poll_s=0.01)
    kind, text = next(second)
    assert kind == "wait" and text.startswith("Waiting: 1st in line, behind another person's lab check")
    third = in_line("shading", "ana", lambda: "ana's shading", line=line, poll_s=0.01)
    kind, text = next(third)
    assert kind == "wait" and "2nd in line, behind your own lab check" in text and "1 more waiting" in text
    release.set()
    assert list(first)[-1] == ("done", "ana's table")
    second_out = list(second)
    assert second_out[-1] == ("done", "bob's shading")
    assert any(k == "busy" and t.startswith("Computing your shading") for k, t in second_out)
    assert list(third)[-1] == ("done", "ana's shading")
    assert line.tickets() == [] and line.typical("lab check") is not None


def test_an_error_in_the_computation_is_raised_and_frees_the_line():
    line = Line()

    def broken():
        raise ValueError("no such run")
    gen = in_line("lab check", "ana", broken, line=line, poll_s=0.01)
    with pytest.raises(ValueError, match="no such run"):
        list(gen)
    assert line.tickets() == []
    assert list(in_line("shading", "bob", lambda: 7, line=line, poll_s=0.01))[-1] == ("done", 7)


def test_a_closed_page_leaves_the_line_and_never_runs_two_at_once():
    line = Line()
    release, running = threading.Event(), threading.Event()

    def slow():
        running.set()
        release.wait(60)
        return "done"
    holder = in_line("lab check", "ana", slow, line=line, poll_s=0.01)
    next(holder)
    waiter = in_line("shading", "bob", lambda: "x", line=line, poll_s=0.01)
    assert next(waiter)[0] == "wait"
    waiter.close()   # bob closes his page while waiting: his ticket goes at once
    assert len(line.tickets()) == 1
    until(running.is_set, "the holder's computation started")
    holder.close()   # ana closes hers while hers computes: the slot stays taken until it ends
    third = in_line("shading", "cy", lambda: "cy's", line=line, poll_s=0.01)
    assert next(third)[0] == "wait"
    release.set()
    assert list(third)[-1] == ("done", "cy's")
    assert line.tickets() == []


# --------------------------------------------------------------------------- the room

@pytest.fixture
def workspace_with_people(tmp_path, monkeypatch):
    """A workspace of its own: ana trains one run (this test's own process stands in for
    it) and finished another, bob and cy wait in line, the host has a CLI run, and ana,
    bob and dee have labelled."""
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    runs = tmp_path / "runs"

    def run(run_id, **status):
        (runs / run_id).mkdir(parents=True)
        (runs / run_id / "config.yaml").write_text("method: lora\n")
        (runs / run_id / "status.json").write_text(json.dumps({"run_id": run_id} | status))
    me = psutil.Process()
    run("20260101-000000-lora", status="finished", method="lora", owner="ana", step=30, max_steps=30)
    run("20260101-000100-full", status="finished", method="full")   # the host's, from the CLI
    run("20260101-000200-dpo", status="running", method="dpo", owner="ana", step=12, max_steps=40,
        pid=me.pid, pid_start=me.create_time(), started=time.time() - 65)
    run("20260101-000300-lora", status="queued", method="lora", owner="cy", queued_at=time.time() - 5)
    run("20260101-000400-qlora", status="queued", method="qlora", owner="bob", queued_at=time.time() - 30)
    run("20260101-000500-lora", status="running", method="lora", owner="bob", step=3, max_steps=9,
        pid=2**22 - 1, pid_start=1.0)   # its process is gone: interrupted, not training
    store = LabelStore()
    for i, vote in enumerate(("a", "b", "tie")):
        store.add("arena", prompt=PROMPT, answer_a=f"A{i}", answer_b=f"B{i}", vote=vote, annotator="ana")
    store.add("other", prompt=PROMPT, answer_a="A", answer_b="B", vote="both_bad", annotator="dee")
    store.add_thumb("arena", prompt=PROMPT, answer="yes", up=True, annotator="bob")
    store.add_thumb("arena", prompt=PROMPT, answer="no", up=False, annotator="bob")
    store.add_thumb("arena", prompt=PROMPT, answer="fine", up=True, annotator="ana")
    return tmp_path


def test_the_snapshot_says_who_trains_who_waits_and_what_each_person_did(workspace_with_people):
    snap = room.snapshot()
    assert [(r["owner"], r["run_id"], r["method"], r["step"], r["max_steps"]) for r in snap["training"]] == \
        [("ana", "20260101-000200-dpo", "dpo", 12, 40)]
    assert snap["training"][0]["cpu_percent"] is not None   # this process, measured
    assert [(r["place"], r["owner"], r["run_id"]) for r in snap["waiting"]] == \
        [(1, "bob", "20260101-000400-qlora"), (2, "cy", "20260101-000300-lora")]
    people = {p["person"]: p for p in snap["people"]}
    assert [p["person"] for p in snap["people"]] == ["ana", "bob", "cy", "dee", room.HOST]
    assert people["ana"] == {"person": "ana", "runs": {"finished": 1, "running": 1}, "votes": 3, "thumbs_up": 1,
                             "thumbs_down": 0}
    assert people["bob"]["runs"] == {"queued": 1, "interrupted": 1}
    assert (people["bob"]["votes"], people["bob"]["thumbs_up"], people["bob"]["thumbs_down"]) == (0, 1, 1)
    assert people["dee"]["runs"] == {} and people["dee"]["votes"] == 1
    assert people[room.HOST]["runs"] == {"finished": 1}
    m = snap["machine"]
    assert m["cores"] == len(m["cpu_per_core"]) == psutil.cpu_count() and m["training_processes"] == 1
    assert 0 < m["memory_available_mb"] <= m["memory_total_mb"] and len(m["load_average"]) == 3


def test_a_workspace_without_labels_gets_no_label_store_from_looking(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    snap = room.snapshot()
    assert snap["training"] == snap["waiting"] == snap["people"] == [] and snap["runs"] == 0
    assert not (tmp_path / "labels.db").exists()


def test_only_an_admin_of_an_app_with_logins_sees_the_room(workspace_with_people, monkeypatch):
    monkeypatch.setenv("TUNELAB_ADMINS", "root")
    assert room_logic.may_see("root", logins=True)
    assert not room_logic.may_see("ana", logins=True)
    assert not room_logic.may_see(None, logins=False) and not room_logic.may_see("root", logins=False)
    refused = room_logic.room_view("ana", logins=True)
    assert not refused["allowed"] and "TUNELAB_ADMINS" in refused["head"]
    assert refused["training"].empty and refused["waiting"].empty and refused["people"].empty
    assert refused["machine"] == refused["inside"] == ""
    monkeypatch.setenv("TUNELAB_AUTH", "ana:pw-a,root:pw-r")
    assert room_logic.may_see("root") and not room_logic.may_see("ana")   # logins read from the settings


def test_the_room_as_the_admin_sees_it(workspace_with_people, monkeypatch):
    monkeypatch.setenv("TUNELAB_ADMINS", "root")
    view = room_logic.room_view("root", logins=True)
    assert view["allowed"]
    assert "5 people, 6 runs; 1 training, 2 waiting" in view["head"]
    training = view["training"].to_dict("records")
    assert len(training) == 1 and training[0]["Person"] == "ana" and training[0]["Step"] == "12 / 40"
    assert training[0]["Running for"].startswith("1:0")   # started 65 s ago
    assert view["waiting"][["Place", "Person"]].values.tolist() == [[1, "bob"], [2, "cy"]]
    people = view["people"].set_index("Person")
    assert people.loc["ana", "Runs"] == "1 running, 1 finished"
    assert people.loc["bob", "Runs"] == "1 queued, 1 interrupted"
    assert people.loc["dee", "Runs"] == "none"
    assert (people.loc["ana", "Votes"], people.loc["ana", "👍"], people.loc["bob", "👎"]) == (3, 1, 1)
    assert "CPU a core:" in view["machine"] and "1 training process " in view["machine"]
    assert "nothing computing" in view["inside"]


def test_the_inside_line_as_the_room_shows_it():
    line = Line()
    a = line.join("lab check", "ana")
    line.begin(a)
    line.join("shading", "bob")
    line.join("shading", None)
    text = room_logic.inside_text(line, time.time())
    assert "ana's lab check computing" in text and "2 waiting: bob's shading, someone's shading" in text


def test_machine_text_names_each_figure():
    text = room_logic.machine_text({
        "cpu_per_core": [87.0, 45.2], "cores": 2, "load_average": (1.9, 1.7, 1.2), "memory_used_mb": 5 * 1024,
        "memory_available_mb": 2.5 * 1024, "memory_total_mb": 7.5 * 1024, "training_processes": 2,
        "training_cpu_percent": 150.0, "app_cpu_percent": 40.0, "other_children": 1,
        "other_children_cpu_percent": 2.0})
    assert text.startswith("CPU a core: 87%, 45% · load average 1.90 / 1.70 / 1.20")
    assert "5.0 GB used, 2.5 GB available of 7.5 GB" in text
    assert "2 training processes (150% CPU) · the app 40% CPU" in text and "1 other child process" in text


def test_the_room_reads_what_changed_since_the_last_look(workspace_with_people, monkeypatch):
    monkeypatch.setenv("TUNELAB_ADMINS", "root")
    status = workspace_with_people / "runs" / "20260101-000400-qlora" / "status.json"
    status.write_text(json.dumps(json.loads(status.read_text()) | {"status": "cancelled"}))
    view = room_logic.room_view("root", logins=True)
    assert view["waiting"][["Place", "Person"]].values.tolist() == [[1, "cy"]]
