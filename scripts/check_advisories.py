"""Look up known security advisories for every pinned package in requirements*.txt.

PyPI's JSON API lists the advisories (from the OSV database) that affect a release:
/pypi/<name>/<version>/json for any release, and /pypi/<name>/json for the newest one.
This script asks for each pin, prints what it found, and exits 1 if any pinned release
has an advisory, 2 if a pin could not be checked (for example, offline).

    python scripts/check_advisories.py            # requirements.txt and requirements-model.txt
    python scripts/check_advisories.py gradio==6.31.0
"""
from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([A-Za-z0-9_.+\-]+)")


def pins(lines) -> list[tuple[str, str]]:
    out = []
    for line in lines:
        m = PIN.match(line.split("#", 1)[0])
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def _get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def advisories(name: str, version: str) -> list[dict]:
    """The advisories PyPI lists for name==version; raises LookupError if it cannot tell."""
    data = _get(f"https://pypi.org/pypi/{name}/{version}/json")
    if data is None:  # some mirrors only serve the project page, which covers the newest release
        data = _get(f"https://pypi.org/pypi/{name}/json")
        if data is None or data["info"]["version"] != version:
            raise LookupError(f"PyPI has no per-release page for {name}=={version} here")
    return data.get("vulnerabilities") or []


def main(argv: list[str]) -> int:
    if argv:
        wanted = pins(argv)
    else:
        wanted = []
        for req in ("requirements.txt", "requirements-model.txt"):
            path = ROOT / req
            if path.exists():
                wanted += pins(path.read_text().splitlines())
    found = unknown = 0
    for name, version in wanted:
        try:
            vulns = advisories(name, version)
        except (LookupError, OSError, ValueError) as exc:
            print(f"?  {name}=={version}: not checked ({exc})")
            unknown += 1
            continue
        if not vulns:
            print(f"ok {name}=={version}: no known advisory")
        for v in vulns:
            found += 1
            fixed = ", ".join(v.get("fixed_in") or []) or "no fixed release listed"
            print(f"!! {name}=={version}: {v.get('id')} {' '.join(v.get('aliases') or [])} "
                  f"(fixed in {fixed}) {v.get('link') or ''}")
    print(f"{len(wanted)} pins: {found} advisories, {unknown} not checked")
    return 1 if found else (2 if unknown else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
