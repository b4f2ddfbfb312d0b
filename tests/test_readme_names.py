"""Every dotted public name the README and the docs pages show (`etrm.something.Name`) exists,
and every relative link between them resolves."""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def documentation_pages() -> list[Path]:
    # docs/LOG.md is a lab notebook: it records what was true when it was written.
    return [README, *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "LOG.md")]


PAGES = documentation_pages()


def _resolve(dotted: str) -> object:
    # The longest importable module prefix, then attributes.
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(dotted)


def test_the_docs_pages_are_found():
    names = {p.name for p in PAGES}
    assert {"README.md", "design.md", "results.md", "performance.md", "gpu.md"} <= names
    assert "LOG.md" not in names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_dotted_name_in_the_page_resolves(page):
    names = sorted(set(re.findall(r"\b(etrm(?:\.[A-Za-z_]\w*)+)", page.read_text())))
    missing = []
    for name in names:
        try:
            _resolve(name)
        except (ModuleNotFoundError, AttributeError) as error:
            missing.append(f"{name} ({error})")
    assert not missing, missing


def test_the_pattern_finds_what_the_pages_document():
    text = "".join(p.read_text() for p in PAGES)
    assert "etrm.data.Augmentation" in set(re.findall(r"\b(etrm(?:\.[A-Za-z_]\w*)+)", text))


def _anchor(heading: str) -> str:
    # GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.MULTILINE)
            if anchor not in {_anchor(h) for h in headings}:
                broken.append(target)
    assert not broken, broken
