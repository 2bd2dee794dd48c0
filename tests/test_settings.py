"""Settings from the environment: one table, the host's limits, and what the page warns about."""

import json
import os
import re
from pathlib import Path

import pytest

from tunelab.service import hosting, jobs, settings
from tunelab.training.runfolder import RunError, process_start_time

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_the_code_reads_is_in_the_table_and_the_docs():
    code = "".join(p.read_text() for p in [ROOT / "app.py", *(ROOT / "tunelab").rglob("*.py")])
    read = set(re.findall(r"TUNELAB_[A-Z_]+", code))
    listed = {name for name, _, _ in settings.SETTINGS}
    assert read == listed, (read - listed, listed - read)
    page = (ROOT / "docs" / "settings.md").read_text()
    table = page[page.index("| setting | default |"):]
    for name, default, meaning in settings.SETTINGS:
        assert f"| `{name}` | {default} | {meaning} |" in table, name


def test_training_switch_and_limit(monkeypatch):
    monkeypatch.delenv("TUNELAB_ALLOW_TRAINING", raising=False)
    monkeypatch.delenv("TUNELAB_MAX_TRAININGS", raising=False)
    assert settings.allow_training() and settings.max_trainings() == 1
    monkeypatch.setenv("TUNELAB_ALLOW_TRAINING", "off")
    assert not settings.allow_training()
    monkeypatch.setenv("TUNELAB_MAX_TRAININGS", "3")
    assert settings.max_trainings() == 3
    for bad in ("0", "two"):
        monkeypatch.setenv("TUNELAB_MAX_TRAININGS", bad)
        with pytest.raises(ValueError, match="TUNELAB_MAX_TRAININGS must be a whole number >= 1"):
            settings.max_trainings()


def _fake_running(home: Path, run_id: str) -> None:
    d = home / "runs" / run_id
    d.mkdir(parents=True)
    (d / "status.json").write_text(json.dumps({"run_id": run_id, "status": "running", "pid": os.getpid(),
                                               "pid_start": process_start_time(os.getpid())}))


def test_what_counts_as_training_and_the_training_switch(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    monkeypatch.setenv("TUNELAB_ALLOW_TRAINING", "0")
    with pytest.raises(RunError, match=r"training is turned off on this server \(TUNELAB_ALLOW_TRAINING=0\)"):
        jobs.check_allowed()
    monkeypatch.delenv("TUNELAB_ALLOW_TRAINING")
    jobs.check_allowed()
    assert jobs.training_now() == []
    _fake_running(tmp_path, "20260101-000000-busy")          # alive: this test's own process
    assert jobs.training_now() == ["20260101-000000-busy"]
    (tmp_path / "runs" / "20260101-000000-busy" / "status.json").write_text(
        json.dumps({"status": "running", "pid": 2**22 + 12345}))  # a dead process: interrupted, not training
    assert jobs.training_now() == []


def test_a_space_may_start_without_a_login_but_says_so(monkeypatch, tmp_path):
    for k in ("TUNELAB_AUTH", "TUNELAB_AUTH_FILE", "TUNELAB_HOST", "TUNELAB_SHARE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.delenv("SPACE_ID", raising=False)
    with pytest.raises(hosting.HostingError):
        hosting.required_auth()                  # anywhere else: refused
    monkeypatch.setenv("SPACE_ID", "someone/tunelab")
    assert hosting.required_auth() is None       # a Space's visibility is its gate
    with pytest.raises(hosting.HostingError):
        hosting.required_auth(share=True)        # a share link still needs a login

    texts = [t for _, t in settings.notices(tmp_path, logins=False)]
    assert any("ephemeral storage" in t for t in texts) and any("no login" in t for t in texts)
    monkeypatch.setattr(settings, "persistent", lambda home: True)
    assert [t for _, t in settings.notices(tmp_path, logins=True)] == []
    monkeypatch.setenv("TUNELAB_ALLOW_TRAINING", "0")
    assert settings.notices(tmp_path, logins=True) == [("info", settings.notices(tmp_path, True)[0][1])]
    monkeypatch.delenv("SPACE_ID")
    monkeypatch.delenv("TUNELAB_ALLOW_TRAINING")
    assert settings.notices(tmp_path, logins=False) == []    # locally: nothing to say


def test_persistent_storage_means_under_data():
    assert not settings.persistent(Path("/tmp/somewhere"))
    if Path("/data").is_dir():
        assert settings.persistent(Path("/data/tunelab"))


def test_small_hub_models_are_offered_only_online(monkeypatch):
    from tunelab.modelio import hub
    from tunelab.ui import logic
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not any(m in logic.model_choices() for m in logic.ONLINE_MODELS)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")   # not offline by setting: the hub must also answer (tests/test_hub.py)
    monkeypatch.setattr(hub, "probe", lambda: True)
    hub.forget()
    choices = logic.model_choices(wait=1)
    hub.forget()
    assert choices[0] == logic.default_model() and "Qwen/Qwen2.5-0.5B-Instruct" in choices


def test_the_app_as_a_space_runs_it_starts_without_a_login_and_warns_at_the_top(tmp_path, tiny_model_dir):
    # What a Space sets: SPACE_ID, and Gradio's server name 0.0.0.0; no login, no /data.
    from .browser_kit import AppServer
    env = {"SPACE_ID": "someone/tunelab", "TUNELAB_HOST": "0.0.0.0", "TUNELAB_STANDBY": "0"}
    for k in ("TUNELAB_AUTH", "TUNELAB_AUTH_FILE"):
        env[k] = ""
    app = AppServer(tmp_path, tiny_model_dir, env=env).start()
    try:
        import urllib.request
        config = json.load(urllib.request.urlopen(app.url + "config", timeout=30))
        banner = next(c["props"]["value"] for c in config["components"]
                      if c.get("props", {}).get("elem_id") == "host-notices")
        assert "ephemeral storage" in banner and "no login" in banner and "TUNELAB_AUTH" in banner
    finally:
        app.stop()


def test_the_space_metadata_matches_the_pins():
    import yaml
    readme = (ROOT / "README.md").read_text()
    assert readme.startswith("---\n")
    meta = yaml.safe_load(readme.split("---\n")[1])
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == pins["gradio"]
    assert (ROOT / meta["app_file"]).is_file() and meta["python_version"] == "3.11"
