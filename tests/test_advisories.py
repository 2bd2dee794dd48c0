"""scripts/check_advisories.py: which pins it reads, and what it reports (PyPI faked)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_advisories", ROOT / "scripts" / "check_advisories.py")
ca = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ca)


def test_every_exact_pin_of_the_requirements_is_read():
    pins = dict(ca.pins((ROOT / "requirements.txt").read_text().splitlines()))
    assert pins["gradio"] and pins["torch"] == "2.13.0" and "transformers" in pins
    assert ca.pins(["# gradio==1.0", "foo>=1", "bar == 2.0  # why", ""]) == [("bar", "2.0")]


def test_an_advisory_fails_the_check_and_an_unreachable_pin_is_not_a_pass(monkeypatch, capsys):
    found = {"gradio": [{"id": "GHSA-xxxx", "aliases": ["CVE-2099-1"], "fixed_in": ["9.9.9"], "link": "https://osv.dev/x"}],
             "pandas": []}

    def fake(name, version):
        if name not in found:
            raise LookupError("offline")
        return found[name]
    monkeypatch.setattr(ca, "advisories", fake)
    assert ca.main(["gradio==6.31.0", "pandas==3.1.1"]) == 1
    out = capsys.readouterr().out
    assert "!! gradio==6.31.0: GHSA-xxxx CVE-2099-1 (fixed in 9.9.9)" in out and "ok pandas==3.1.1" in out
    assert ca.main(["pandas==3.1.1"]) == 0
    assert ca.main(["pandas==3.1.1", "torch==2.13.0"]) == 2
    assert "?  torch==2.13.0: not checked (offline)" in capsys.readouterr().out
