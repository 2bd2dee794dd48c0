"""Pages that never go stale (issue #32), without a browser: a queued run's message follows
its place in line and turns into "Started" when it starts, drawn from the same read as the
progress panel; Stop follows who owns the run; who stopped a run is shown; label counts
name each kind with right plurals, and label numbers say which kind they count."""

from __future__ import annotations

import html
import json
import re
import time

import pytest

from tunelab.common.words import counted
from tunelab.ui import arena_logic as al
from tunelab.ui import logic, notes, thumbs_logic, train_logic


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A workspace of its own: the queue is every queued run in the workspace."""
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    monkeypatch.setenv("TUNELAB_MAX_TRAININGS", "1")
    return tmp_path


def write_status(home, run_id, **state):
    run_dir = home / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "status.json").write_text(json.dumps({"run_id": run_id, "max_steps": 3, **state}))
    return run_dir


def tick(note, run_id):
    """What the Train tab's 1 s tick draws for the run it follows (train_tab.on_tick): the
    progress panel and Start's message, from one read of the status and of the queue."""
    from tunelab.service import jobs
    from tunelab.training.runs import run_status
    status = run_status(logic.run_dir(run_id))
    place = jobs.queue_position(run_id) if status.get("status") == "queued" else None
    status["queue"] = place
    panel = train_logic.progress_html(train_logic.progress_state([], status), run_id)
    redrawn = notes.requeue(note, run_id, status.get("status"), place)
    return panel, note if redrawn is None else redrawn


def text_of(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def places(markup: str) -> list[str]:
    return re.findall(r"\d+ of \d+ in line", text_of(markup))


# --------------------------------------------------------------------------- queue messages

def test_a_queued_message_follows_its_place_and_turns_into_started(home):
    write_status(home, "first", status="queued", queued_at=time.time() - 20)
    write_status(home, "second", status="queued", queued_at=time.time() - 10)
    note = notes.launch_note("second", (2, 2))
    assert notes.about(note) == ("second", "queued") and "Queued second: 2 of 2 in line" in note

    # Someone joins behind: the message and the panel say "2 of 3" together.
    write_status(home, "third", status="queued", queued_at=time.time())
    panel, note = tick(note, "second")
    assert places(panel) == places(note) == ["2 of 3 in line"]

    # The first leaves the line (it starts training): the second moves up, in both.
    write_status(home, "first", status="running", pid=1)
    panel, note = tick(note, "second")
    assert places(panel) == places(note) == ["1 of 2 in line"]
    assert tick(note, "second")[1] == note   # nothing changed: the same message

    # Its turn: a training process, and "Queued" is gone from both.
    write_status(home, "second", status="starting", pid=1)
    panel, note = tick(note, "second")
    assert "Queued" not in text_of(note) and "Queued" not in text_of(panel)
    assert "Started second (its turn came)" in text_of(note)
    assert notes.about(note) == ("second", "end")   # from now on, a Started message's rules
    assert notes.keep(note, "second", settled=False) and not notes.keep(note, "second", settled=True)


def test_a_queued_message_goes_when_the_run_leaves_the_line_without_training(home):
    write_status(home, "waits", status="queued", queued_at=time.time())
    note = notes.launch_note("waits", (1, 1))
    assert not notes.keep(note, "waits", settled=True)     # cancelled: the panel says so
    assert not notes.keep(note, "other", settled=False)    # the tab follows another run
    assert notes.keep(note, "waits", settled=False)
    write_status(home, "waits", status="cancelled")
    assert tick(note, "waits")[1] == ""


def test_a_queued_message_is_about_its_own_run_only():
    note = notes.launch_note("r1", (1, 1))
    assert notes.requeue(note, "r2", "running", None) is None     # not the run followed: left to `keep`
    started = notes.launch_note("r1", None)
    assert notes.about(started) == ("r1", "end") and "Started r1:" in started
    assert notes.requeue(started, "r1", "running", None) is None  # not a queued message
    assert notes.requeue("", "r1", "queued", (1, 1)) is None
    assert notes.requeue(notes.form_note("lr: must be > 0"), "r1", "queued", (1, 1)) is None


def test_a_queued_message_keeps_what_follows_its_head():
    more = "DPO trains on 6 pairs from 'arena'."
    note = notes.launch_note("r1", (2, 2), more)
    assert text_of(note) == f"{logic.queued_text('r1', (2, 2))} {more}"
    moved = notes.requeue(note, "r1", "queued", (1, 2), more)
    assert text_of(moved) == f"{logic.queued_text('r1', (1, 2))} {more}"
    started = notes.requeue(moved, "r1", "running", None, more)
    assert text_of(started) == f"{logic.started_text('r1', waited=True)} {more}"


def test_queue_texts():
    assert logic.queued_text("r1", (1, 3)).startswith("Queued r1: 1 of 3 in line; it starts when a training slot")
    # Status still queued but already out of the line as the page looked: no numbers to disagree with.
    assert logic.queued_text("r1", None) == "Queued r1: it starts when a training slot frees."
    assert logic.started_text("r1") == "Started r1: the first steps come after the model loads."
    panel = train_logic.progress_html(train_logic.progress_state([], {"status": "queued", "queue": None}), "r1")
    assert "in line" not in panel and "Queued" in panel


# --------------------------------------------------------------------------- Stop and its owner

def test_stop_is_the_owners_with_logins_and_anyones_without(monkeypatch):
    monkeypatch.setenv("TUNELAB_ADMINS", "host")
    monkeypatch.delenv("TUNELAB_DOWNLOADS", raising=False)
    live = train_logic.progress_state([], {"status": "running"})
    ended = train_logic.progress_state([], {"status": "finished"})
    anas = {"run_id": "r1", "status": "running", "owner": "ana"}
    assert train_logic.stop_control(live, anas, "ana") == (True, "")
    assert train_logic.stop_control(live, anas, "host") == (True, "")    # an admin
    enabled, line = train_logic.stop_control(live, anas, "bob")
    assert not enabled and line.startswith("r1 is ana's run: only ana or an admin can stop")
    assert train_logic.stop_control(live, anas, None) == (True, "")      # no logins: anyone here
    hosts = {"run_id": "r2", "status": "running"}                         # started without a login, or the CLI
    enabled, line = train_logic.stop_control(live, hosts, "bob")
    assert not enabled and "the host's run: only an admin" in line
    assert train_logic.stop_control(ended, anas, "ana") == (False, "")   # nothing left to stop


# --------------------------------------------------------------------------- who stopped it

@pytest.mark.parametrize("state", ["stopped", "cancelled"])
def test_who_stopped_a_run_is_shown(state):
    ps = train_logic.progress_state([], {"status": state, "stopped_by": "bob"})
    assert ps["stopped_by"] == "bob"
    assert "(stopped by bob)" in train_logic.ended_line(ps)
    assert "(stopped by bob)" in train_logic.progress_html(ps, "r1")
    cli = train_logic.progress_state([], {"status": state, "stopped_by": "the host (CLI)"})
    assert train_logic.ended_line(cli).endswith("(stopped by the host (CLI))")


def test_who_stopped_a_run_is_left_out_when_unknown_or_beside_the_point():
    assert "stopped by" not in train_logic.ended_line(train_logic.progress_state([], {"status": "stopped"}))
    # A resumed run that trains again, or one that finished: an old stopped_by says nothing now.
    for state in ("running", "finished", "failed"):
        ps = train_logic.progress_state([], {"status": state, "stopped_by": "bob"})
        assert ps["stopped_by"] is None and "stopped by" not in train_logic.progress_html(ps)
    note = "Stopped before the first training step; nothing was trained"
    ps = train_logic.progress_state([], {"status": "cancelled", "note": note, "stopped_by": "someone using the app"})
    assert train_logic.ended_line(ps) == f"{note} (stopped by someone using the app)"


# --------------------------------------------------------------------------- label counts and numbers

@pytest.mark.parametrize("n, votes, pairs", [(0, "0 votes", "0 pairs"), (1, "1 vote", "1 pair"),
                                             (2, "2 votes", "2 pairs")])
def test_counts_have_right_plurals(n, votes, pairs):
    assert counted(n, "vote") == votes and counted(n, "pair") == pairs
    assert counted(n, "answer", "answers") == f"{n} answer{'s' * (n != 1)}"


def test_a_count_names_each_kind():
    info = {"labels": 6, "pairs": 6, "thumbs_up": 4, "thumbs_down": 4}
    assert al.count_text(info) == "6 votes · 6 pairs for DPO/ORPO · 4 👍 · 4 👎"
    assert al.count_text({"labels": 1, "pairs": 1, "thumbs_up": 0, "thumbs_down": 1}) == \
        "1 vote · 1 pair for DPO/ORPO · 0 👍 · 1 👎"
    assert al.count_text(None) == "0 votes · 0 pairs for DPO/ORPO · 0 👍 · 0 👎"


def test_the_count_line_reads_the_store(home):
    store = al.store()
    prompt = [{"role": "user", "content": "Sea?"}]
    store.add("kinds", prompt=prompt, answer_a="Blue.", answer_b="Grey.", vote="a", annotator="ana", key="v1")
    store.add("kinds", prompt=prompt, answer_a="Blue.", answer_b="Green.", vote="tie", annotator="ana", key="v2")
    for i, up in enumerate((True, True, False)):
        store.add_thumb("kinds", prompt=prompt, answer=f"Answer {i}", up=up, annotator="ana", key=f"t{i}")
    line = text_of(al.count_html("kinds"))
    assert line == "2 votes · 1 pair for DPO/ORPO · 2 👍 · 1 👎 in kinds"
    assert text_of(al.count_html("empty")) == "0 votes · 0 pairs for DPO/ORPO · 0 👍 · 0 👎 in empty"
    assert al.count_html(" ") == ""


def test_label_numbers_say_which_kind_they_count(home):
    store = al.store()
    prompt = [{"role": "user", "content": "Sea?"}]
    for i in range(6):
        vote_id, _ = store.add("nums", prompt=prompt, answer_a=f"Blue {i}.", answer_b="Grey.", vote="a",
                               annotator="ana", key=f"v{i}")
    thumb_id, new = store.add_thumb("nums", prompt=prompt, answer="Blue.", up=True, annotator="ana", key="t0")
    assert (vote_id, thumb_id) == (6, 1)   # separate tables, separate numbers: the texts say which
    assert al.vote_saved_text(vote_id, True, " nums ") == "Saved vote #6 in 'nums'."
    assert al.vote_saved_text(vote_id, False, "nums") == "Already saved as vote #6."
    assert thumbs_logic.saved_text(thumb_id, new, True, "nums").startswith("Saved 👍 as thumb #1 in 'nums'.")
    assert thumbs_logic.saved_text(thumb_id, False, True, "nums") == "Already saved as thumb #1."
