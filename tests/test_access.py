"""Runs belong to people: who may stop, resume, delete, rename and download a run
(tunelab/service/access.py), asked by the service itself (jobs.stop, launch_resume, delete,
rename; the Runs tab's downloads), and what the Runs tab draws from it (runs_logic).

Two signed-in users (ana, bob), an admin (root, in TUNELAB_ADMINS) and the host (user None:
no login, or the CLI). Run folders are written by hand; no training process is needed,
except one resume that really starts, to show the owner survives it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tunelab import RunConfig
from tunelab.common import workspace
from tunelab.service import access
from tunelab.service.jobs import Jobs
from tunelab.training.runfolder import RunError, Status, process_start_time
from tunelab.training.runs import list_runs, run_status
from tunelab.ui import exports, runs_logic


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A workspace of its own (a queued run here must not queue another test's), root as admin."""
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNELAB_ADMINS", "root, ")
    monkeypatch.setenv("TUNELAB_STANDBY", "0")
    monkeypatch.delenv("TUNELAB_DOWNLOADS", raising=False)
    workspace.runs_dir().mkdir(parents=True, exist_ok=True)
    return workspace.runs_dir()


def make_run(name, status="finished", owner=None, model="./no/such/model", **extra):
    """A run folder with a config and a status.json, as the app leaves them."""
    d = workspace.runs_dir() / name
    d.mkdir(parents=True)
    RunConfig.from_dict({"method": "lora", "model": model, "data": {"train": "d.jsonl"},
                         "train": {"max_steps": 4}}).save(d / "config.yaml")
    (d / "status.json").write_text(json.dumps({"run_id": name, "status": status, "owner": owner, "step": 2,
                                               "max_steps": 4, **extra}))
    return d


def on_disk(d):
    return json.loads((d / "status.json").read_text())


def busy_slot(name="20260101-000000-busy"):
    """A run 'training' under this test process: the one training slot is taken, so a launch queues."""
    return make_run(name, status="running", pid=os.getpid(), pid_start=process_start_time(os.getpid()))


# --------------------------------------------------------------------------- access.py

def test_owners_admins_and_the_host(monkeypatch):
    monkeypatch.setenv("TUNELAB_ADMINS", " root ,, eve")
    ana = {"run_id": "r1", "owner": "ana"}
    hosts = {"run_id": "r2", "owner": None}
    assert access.admins() == {"root", "eve"}
    assert access.may_change(ana, "ana") and access.may_change(ana, "root") and access.may_change(ana, None)
    assert not access.may_change(ana, "bob")
    assert access.may_change(hosts, "root") and not access.may_change(hosts, "ana")   # the host's run
    with pytest.raises(RunError, match=r"r1 is ana's run: only ana or an admin can delete it \(signed in as bob\)"):
        access.check(ana, "bob", "delete")
    with pytest.raises(RunError, match="r2 is the host's run: only an admin can stop it"):
        access.check(hosts, "ana", "stop")
    access.check(ana, "ana", "rename")   # nothing raised
    assert access.whose_line(ana, "ana") == ""
    assert access.whose_line(ana, "bob") == \
        "r1 is ana's run: only ana or an admin can stop, resume, delete or rename it."
    assert access.actor("bob") == "bob"
    assert access.actor(None, cli=True) == "the host (CLI)" and access.actor(None) == "someone using the app"


def test_downloads_are_for_everyone_unless_the_host_says_own(monkeypatch):
    ana = {"run_id": "r1", "owner": "ana"}
    monkeypatch.setenv("TUNELAB_ADMINS", "root")
    monkeypatch.delenv("TUNELAB_DOWNLOADS", raising=False)
    assert access.may_download(ana, "bob")
    monkeypatch.setenv("TUNELAB_DOWNLOADS", "own")
    assert not access.may_download(ana, "bob") and access.may_download(ana, "ana") and access.may_download(ana, "root")
    with pytest.raises(RunError, match="only ana or an admin can download it"):
        access.check(ana, "bob", "download")
    assert "delete, rename or download it" in access.whose_line(ana, "bob")
    monkeypatch.setenv("TUNELAB_DOWNLOADS", "some")
    with pytest.raises(ValueError, match="TUNELAB_DOWNLOADS must be 'all' or 'own'"):
        access.may_download(ana, "bob")


# --------------------------------------------------------------------------- the service asks

def test_delete_is_the_owners_an_admins_or_the_hosts(home):
    runs = {who: make_run(f"20260101-00000{i}-{who}", owner=who) for i, who in enumerate(["ana", "bob", "x"])}
    with pytest.raises(RunError, match="is ana's run: only ana or an admin can delete it"):
        Jobs().delete(runs["ana"].name, by="bob")
    assert runs["ana"].is_dir() and on_disk(runs["ana"])["owner"] == "ana"
    Jobs().delete(runs["ana"].name, by="ana")
    Jobs().delete(runs["bob"].name, by="root")           # an admin
    Jobs().delete(runs["x"].name, by=None)                # the host: no login, or the CLI
    assert not any(d.is_dir() for d in runs.values())
    live = make_run("20260101-000009-live", owner="ana", status="queued", queued_at=time.time())
    with pytest.raises(RunError, match="queued to train; cancel it first"):
        Jobs().delete(live.name, by="ana")                # allowed, but not while it waits to train


def test_rename_sets_a_title_and_never_the_id(home):
    d = make_run("20260101-000000-lora", owner="ana")
    with pytest.raises(RunError, match="is ana's run: only ana or an admin can rename it"):
        Jobs().rename(d.name, "bob was here", by="bob")
    assert "title" not in on_disk(d)
    assert Jobs().rename(d.name, "  pirate, r=16 ", by="ana") == "pirate, r=16"
    assert on_disk(d)["title"] == "pirate, r=16" and on_disk(d)["run_id"] == d.name and d.is_dir()
    assert Jobs().rename(d.name, "checked by root", by="root") == "checked by root"
    row = next(r for r in list_runs() if r["run_id"] == d.name)
    assert (row["title"], row["owner"]) == ("checked by root", "ana")
    for bad, why in [("   ", "title: must not be empty"), ("x" * 81, r"title: at most 80 characters \(got 81\)"),
                     ("a\nb", "title: no control characters")]:
        with pytest.raises(RunError, match=why):
            Jobs().rename(d.name, bad, by="ana")
    assert on_disk(d)["title"] == "checked by root"


def test_stop_is_refused_to_others_and_records_who_stopped(home):
    busy_slot()
    ana = make_run("20260101-000001-ana", status="queued", owner="ana", queued_at=time.time())
    hosts = make_run("20260101-000002-host", status="queued", owner=None, queued_at=time.time() + 1)
    with pytest.raises(RunError, match="is ana's run: only ana or an admin can stop it"):
        Jobs().stop(ana.name, by="bob")
    with pytest.raises(RunError, match="the host's run: only an admin can stop it"):
        Jobs().stop(hosts.name, by="ana")
    assert run_status(ana)["status"] == "queued" and "stopped_by" not in on_disk(ana)
    assert Jobs().stop(ana.name, by="root")
    st = on_disk(ana)
    assert st["status"] == "cancelled" and st["stopped_by"] == "root" and st["stop_requested_at"] <= time.time()
    assert Jobs().stop(hosts.name, cli=True)              # `python -m tunelab stop`
    assert on_disk(hosts)["stopped_by"] == "the host (CLI)"
    row = {**next(r for r in list_runs() if r["run_id"] == ana.name)}
    assert "stopped by root" in runs_logic.run_details_html(row) and "owner: ana" in runs_logic.run_details_html(row)


def test_stopping_a_training_process_records_who_and_its_own_writes_keep_it(home):
    """The run's process holds its status from its start and writes it whole at every step:
    the fields the app writes meanwhile (who stopped it, a title) are kept (runfolder.APP_FIELDS)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        d = make_run("20260101-000000-train", status="running", phase="training", owner="ana", pid=proc.pid,
                     pid_start=process_start_time(proc.pid))
        its_own = Status(d)                                   # what the run's process holds
        with pytest.raises(RunError, match="only ana or an admin can stop it"):
            Jobs().stop(d.name, by="bob")
        assert proc.poll() is None
        Jobs().rename(d.name, "ana's pirate", by="ana")
        assert Jobs().stop(d.name, by="ana")
        assert proc.wait(30) == -signal.SIGTERM   # (reaped here: it is this test's child, not the app's)
        its_own.update(status="stopped", step=3)              # its last write, after the stop
        st = on_disk(d)
        assert (st["status"], st["step"], st["stopped_by"], st["title"]) == ("stopped", 3, "ana", "ana's pirate")
    finally:
        proc.kill()
        proc.wait()


def test_resume_keeps_the_owner_and_is_refused_to_others(home):
    busy_slot()
    d = make_run("20260101-000001-ana", status="stopped", owner="ana", stopped_by="bob")
    with pytest.raises(RunError, match="is ana's run: only ana or an admin can resume it"):
        Jobs().launch_resume(d.name, by="bob")
    assert on_disk(d)["status"] == "stopped"
    Jobs().launch_resume(d.name, by="root")                 # queued behind the busy run
    st = on_disk(d)
    assert (st["status"], st["owner"], st["queued_kind"]) == ("queued", "ana", "resume")
    assert st["stopped_by"] is None                       # the earlier stop is not this start's
    with pytest.raises(RunError, match="is queued: only a run that ended can be resumed"):
        Jobs().launch_resume(d.name, by="ana")
    assert Jobs().stop(d.name, by="ana") and on_disk(d)["owner"] == "ana"


def test_a_resume_that_starts_at_once_keeps_the_owner(home):
    d = make_run("20260101-000001-ana", status="stopped", owner="ana")
    Jobs().launch_resume(d.name, by="root")                 # nothing training: it starts now
    st = on_disk(d)
    assert st["status"] == "starting" and st["owner"] == "ana"
    assert Jobs().stop(d.name, by="ana", wait=True, grace_s=60)   # still importing: it ends at once
    st = run_status(d)
    assert st["status"] not in ("starting", "running") and (st["owner"], st["stopped_by"]) == ("ana", "ana")


def test_downloads_are_checked_by_the_export_itself(home, monkeypatch):
    d = make_run("20260101-000000-ana", owner="ana")
    (d / "model").mkdir()
    (d / "model" / "adapter_config.json").write_text("{}")
    assert exports.zip_name(d.name, False, user="bob") == f"{d.name}-adapter.zip"
    assert exports.zip_name(d.name, True, "q8_0") == f"{d.name}-gguf-q8_0.zip"
    monkeypatch.setenv("TUNELAB_DOWNLOADS", "own")
    with pytest.raises(RunError, match="only ana or an admin can download it"):
        exports.zip_name(d.name, False, user="bob")
    with pytest.raises(RunError, match="only ana or an admin can download it"):
        exports.export_zip(d.name, False, home.parent / "gradio", user="bob")
    assert exports.zip_name(d.name, True, user="root") == f"{d.name}-merged.zip"


# --------------------------------------------------------------------------- what the Runs tab draws

def test_the_runs_tab_disables_what_a_user_may_not_do(home):
    d = make_run("20260101-000000-ana", status="stopped", owner="ana", stopped_by="root")
    (d / "model").mkdir()
    row = {**next(r for r in list_runs() if r["run_id"] == d.name), "resumable": True}
    assert runs_logic.run_actions(row, "bob") == {"open": True, "stop": False, "resume": False, "download": True,
                                                  "gguf": True, "delete": False, "rename": False}
    assert runs_logic.run_actions(row, "ana") == {"open": True, "stop": False, "resume": True, "download": True,
                                                  "gguf": True, "delete": True, "rename": True}
    assert runs_logic.run_actions(row, "root") == runs_logic.run_actions(row, "ana")
    assert not any(runs_logic.run_actions(None, "ana").values())
    live = {**row, "status": "running"}
    assert runs_logic.run_actions(live, "ana")["stop"] and not runs_logic.run_actions(live, "ana")["delete"]
    assert not runs_logic.run_actions(live, "bob")["stop"]
    assert runs_logic.access_line(row, "bob") == (f"{d.name} is ana's run: only ana or an admin can stop, resume, "
                                                 f"delete or rename it.")
    assert runs_logic.access_line(row, "ana") == ""
    assert runs_logic.access_line(row, None) == runs_logic.NO_LOGINS == \
        "No logins: anyone who can open this page can stop, resume or delete any run."
    html = runs_logic.run_details_html(row)
    assert "owner: ana" in html and "stopped by root" in html
    assert "stopped by" not in runs_logic.run_details_html({**row, "status": "running"})
    queued = runs_logic.run_details_html({**row, "status": "queued", "queue": (2, 3), "title": "pirate <3"})
    assert "2 of 3 in line" in queued and "pirate &lt;3" in queued
    table = runs_logic.runs_table([row, {"run_id": "x", "status": "finished"}])
    assert table.iloc[0][["title", "owner"]].tolist() == ["", "ana"] and table.iloc[1]["owner"] == "—"


def test_the_cli_acts_as_the_host(home, capsys):
    from tunelab.__main__ import main
    busy_slot()
    queued = make_run("20260101-000001-ana-queued", status="queued", owner="ana", queued_at=time.time())
    done = make_run("20260101-000002-bob", owner="bob")
    assert main(["stop", queued.name]) == 0
    assert (on_disk(queued)["status"], on_disk(queued)["stopped_by"]) == ("cancelled", "the host (CLI)")
    assert main(["rename", done.name, "kept for the report"]) == 0
    assert on_disk(done)["title"] == "kept for the report"
    with pytest.raises(SystemExit) as e:
        main(["rename", done.name, "x" * 81])
    assert e.value.code == 2 and "at most 80 characters" in capsys.readouterr().err
    assert main(["delete", done.name, "--yes"]) == 0 and not done.exists()
