"""Runs belong to people, checked by the server over real HTTP: the app with logins for
ana, bob and root (an admin), driven with gradio_client as each of them. Bob's stop,
resume, rename and delete of ana's runs are refused, through the API endpoints
(/stop_run, /resume_run, /rename_run, /delete_run) and through the Runs tab's own
handlers (what a forged page event would call), and her runs are unchanged on disk; ana's
and root's own actions work. The runs are folders written by hand: nothing trains."""

from __future__ import annotations

import html
import json
import time

import pytest

from .browser_kit import app_with_logins

LOGINS = {"ana": "pw-a", "bob": "pw-b", "root": "pw-r"}
ANA = "20260101-000001-ana-finished"
ANA_QUEUED = "20260101-000002-ana-queued"
BOB = "20260101-000003-bob-finished"
BUSY = "20260101-000000-busy"


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    """The app with three logins; ana has a finished run (with a stand-in adapter to
    download) and one queued behind a 'training' run that holds the one training slot."""
    runs = [(BUSY, dict(status="running", owner="root")),
            (ANA, dict(status="finished", owner="ana", model=True)),
            (ANA_QUEUED, dict(status="queued", owner="ana", queued_at=time.time(), queued_kind="train")),
            (BOB, dict(status="finished", owner="bob"))]
    with app_with_logins(tmp_path_factory.mktemp("run-api-http"), tiny_model_dir, LOGINS, "root", runs) as server:
        yield server


def client(app, user):
    from gradio_client import Client
    return Client(app.url, auth=(user, LOGINS[user]), verbose=False)


def status(app, run_id) -> dict:
    return json.loads((app.home / "runs" / run_id / "status.json").read_text())


def refused(call, *args, api_name):
    """The error text the server answered with; fails when the call went through."""
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError) as e:
        call.predict(*args, api_name=api_name)
    return str(e.value)


def test_bob_may_not_stop_resume_rename_or_delete_anas_runs_over_http(app):
    bob = client(app, "bob")
    before = {r: (app.home / "runs" / r / "status.json").read_bytes() for r in (ANA, ANA_QUEUED)}
    for args, api in [((ANA,), "/delete_run"), ((ANA, "bob's now"), "/rename_run"), ((ANA,), "/resume_run"),
                      ((ANA_QUEUED,), "/stop_run"), ((ANA_QUEUED,), "/delete_run")]:
        text = refused(bob, *args, api_name=api)
        assert f"{args[0]} is ana's run: only ana or an admin can" in text and "signed in as bob" in text, (api, text)
    for run_id, raw in before.items():
        assert (app.home / "runs" / run_id / "status.json").read_bytes() == raw   # untouched


def test_the_runs_tabs_own_handlers_refuse_bob_too(app):
    """What a forged page event would do: call the Runs tab's Delete and Rename handlers."""
    bob = client(app, "bob")
    before = (app.home / "runs" / ANA / "status.json").read_bytes()
    names = set(bob.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/on_delete", "/on_rename"} <= names, names
    bob.predict([], None, api_name="/refresh")   # as the page does: the run ids become the picker's choices
    message = bob.predict(ANA, [], api_name="/on_delete")[0]   # the tab's message (HTML)
    assert "is ana's run: only ana or an admin can delete it" in html.unescape(message)
    message = bob.predict(ANA, "bob's now", [], api_name="/on_rename")[0]
    assert "is ana's run: only ana or an admin can rename it" in html.unescape(message)
    assert (app.home / "runs" / ANA / "status.json").read_bytes() == before


def test_owners_and_admins_may(app):
    ana, root = client(app, "ana"), client(app, "root")
    assert ana.predict(ANA, "  pirate, r=16 ", api_name="/rename_run") == {"run_id": ANA, "title": "pirate, r=16"}
    assert status(app, ANA)["title"] == "pirate, r=16" and (app.home / "runs" / ANA).is_dir()   # the id stays
    assert "title: at most 80 characters" in refused(ana, ANA, "x" * 81, api_name="/rename_run")
    assert root.predict(ANA, "checked", api_name="/rename_run")["title"] == "checked"
    assert status(app, ANA)["owner"] == "ana"
    assert ana.predict(ANA_QUEUED, api_name="/stop_run") == {"run_id": ANA_QUEUED, "stopping": True}
    st = status(app, ANA_QUEUED)
    assert (st["status"], st["stopped_by"]) == ("cancelled", "ana")
    assert root.predict(BOB, api_name="/delete_run") == {"run_id": BOB, "deleted": True}
    assert not (app.home / "runs" / BOB).exists()


def test_a_download_says_what_it_builds_and_hides_the_last_link_meanwhile(app):
    """The Runs tab's download, as the page calls it: first the old link goes and the
    message names the zip being built, then the new link. Bob may: downloads are for all."""
    bob = client(app, "bob")
    bob.predict([], None, api_name="/refresh")
    job = bob.submit(ANA, api_name="/export_adapter")
    job.result(timeout=120)
    (building_file, building), (ready_file, ready) = job.outputs()
    assert (building_file["value"], building_file["visible"]) == (None, False)   # the last link, hidden
    assert f"Building {ANA}-adapter.zip …" in html.unescape(building)
    assert f"Ready: {ANA}-adapter.zip" in html.unescape(ready), ready
    assert ready_file["visible"] and ready_file["value"].endswith(f"{ANA}-adapter.zip"), ready_file
