"""The docs stand alone: every relative link in README.md, docs/ and deploy/ leads to a file of the repository,
and every #anchor to a heading of that file (as GitHub names it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.markdown import github_anchors

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "deploy").rglob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_CODE_BLOCK = re.compile(r"```.*?```", re.S)


def links(page: Path) -> list[str]:
    return [target for target in _LINK.findall(_CODE_BLOCK.sub("", page.read_text()))
            if not target.startswith(("http://", "https://", "mailto:"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_anchor_exists(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists() or ROOT not in destination.parents:
            broken.append(f"{target}: no such file in the repository")
        elif anchor and destination.suffix == ".md" and anchor not in github_anchors(destination.read_text()):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_the_check_finds_a_broken_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [broken](#no-such-heading)\n")
    assert [target for target in links(page) if target.lstrip("#") not in github_anchors(page.read_text())] == [
        "#no-such-heading"]
