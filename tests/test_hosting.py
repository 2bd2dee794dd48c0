"""Who may reach the app: localhost by default, a login for anything wider (tunelab/service/hosting.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.service import hosting
from tunelab.service.hosting import HostingError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("TUNELAB_HOST", "GRADIO_SERVER_NAME", "TUNELAB_SHARE", "TUNELAB_AUTH", "TUNELAB_AUTH_FILE"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("host,local", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.org", False), ("", False)])
def test_which_addresses_are_local(host, local):
    assert hosting.is_local(host) is local


def test_localhost_by_default_and_no_login_needed():
    assert hosting.bind_host() == "127.0.0.1"
    assert hosting.required_auth() is None


@pytest.mark.parametrize("env", [{"TUNELAB_HOST": "0.0.0.0"}, {"GRADIO_SERVER_NAME": "0.0.0.0"},
                                 {"TUNELAB_SHARE": "1"}])
def test_wider_reach_without_a_login_is_refused(monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(HostingError, match="needs a login: set TUNELAB_AUTH"):
        hosting.required_auth()


def test_logins_from_the_environment_and_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELAB_HOST", "0.0.0.0")
    monkeypatch.setenv("TUNELAB_AUTH", "ada:pa:ss, bob:secret#1")
    assert hosting.required_auth() == [("ada", "pa:ss"), ("bob", "secret#1")]
    f = tmp_path / "logins.txt"
    f.write_text("# workshop logins\n\ncarol:  x y \n")
    monkeypatch.setenv("TUNELAB_AUTH_FILE", str(f))
    assert hosting.required_auth()[-1] == ("carol", "  x y")


@pytest.mark.parametrize("content,problem", [("carol\n", "line 1: expected user:password"),
                                             ("# only a comment\n", "no user:password line"),
                                             ("ok:1\n:nouser\n", "line 2: expected user:password")])
def test_a_malformed_login_file_is_named_with_its_line(monkeypatch, tmp_path, content, problem):
    f = tmp_path / "logins.txt"
    f.write_text(content)
    monkeypatch.setenv("TUNELAB_AUTH_FILE", str(f))
    with pytest.raises(HostingError, match=problem) as e:
        hosting.required_auth()
    assert str(f) in str(e.value)


def test_a_missing_login_file_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELAB_AUTH_FILE", str(tmp_path / "nope.txt"))
    with pytest.raises(HostingError, match="cannot read it"):
        hosting.required_auth()


def test_the_app_refuses_to_listen_on_all_interfaces_without_a_login(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "TUNELAB_HOME": str(tmp_path), "TUNELAB_HOST": "0.0.0.0",
           "TUNELAB_PORT": "7999", "TUNELAB_STANDBY": "0", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "listening on 0.0.0.0 lets other machines reach the app, so it needs a login" in out.stderr
