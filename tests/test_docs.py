"""The documentation a clone carries: every relative link in the README, CONTRIBUTING and docs/ resolves, and
nothing points at files a user's clone does not have."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_relative_links_resolve(page):
    text = page.read_text()
    broken = [t for t in LINK.findall(text) if "://" not in t and not (page.parent / t).exists()]
    assert broken == [], f"{page.relative_to(REPO)}: links to missing files {broken}"


def test_the_project_does_not_point_users_at_files_outside_it():
    names = ("REFERENCE.md", "DATA.md")
    code = [p for d in ("benchmark", "submissions", "docs") for p in (REPO / d).rglob("*")
            if p.suffix in (".py", ".md", ".yaml", ".j2")] + PAGES
    hits = [f"{p.relative_to(REPO)}: {n}" for p in code for n in names if n in p.read_text()]
    assert hits == []


def test_the_readme_stays_one_page():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200, "move detail into docs/ and link it"
