"""The front door stays a front door, and its links land.

`mkdocs build --strict` (in .ci/run) checks the links between the pages in docs/; the
README lies outside the site, so its own links and anchors are checked here, with the
rules the issue set for it: short, six methods, a link early on, every docs page in the
site's navigation.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _anchors(md: Path) -> set[str]:
    """The ids MkDocs gives the headings of `md` (Python-Markdown's toc slugify, for ASCII)."""
    ids = set()
    for heading in re.findall(r"^#{1,6} (.+)$", md.read_text(), flags=re.M):
        slug = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
        ids.add(re.sub(r"[-\s]+", "-", slug))
    return ids


def test_every_relative_link_in_the_readme_lands_on_a_file_and_heading():
    links = [link for link in re.findall(r"\]\(([^)\s]+)\)", README.read_text()) if "://" not in link]
    assert len(links) > 10
    for link in links:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.exists(), f"README links to {path}, which does not exist"
        if anchor:
            assert anchor in _anchors(target), f"README links to {link}: {path} has no heading '#{anchor}'"


def test_the_readme_is_short_names_six_methods_and_links_early():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 150, len(lines)
    assert re.search(r"\]\((?!https?://)[^)]+\)", "\n".join(lines[:60])), "no link in the README's first 60 lines"
    meta = yaml.safe_load(text.split("---\n")[1])
    assert len(meta["short_description"]) <= 60   # Spaces' limit
    for method in ("full", "lora", "qlora", "dpo", "kto", "orpo"):
        assert f"| `{method}` |" in text, method
    assert "four methods" not in text


def test_every_docs_page_is_in_the_site_navigation():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    in_nav = {page for entry in config["nav"] for page in entry.values()}
    on_disk = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert in_nav == on_disk
