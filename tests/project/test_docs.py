"""The user documentation stays true to the code and to itself: docs/cli.md is what the parser prints,
the README stays short, and every relative link in the README and the docs pages reaches a file (and,
for a link into a markdown page, a heading of that page)."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from fixtures import ROOT

ROOT = ROOT
README = ROOT / "README.md"
README_MAX_LINES = 300


def _make_cli_docs():
    spec = importlib.util.spec_from_file_location("make_cli_docs", ROOT / "scripts" / "make_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pages() -> list[Path]:
    """The README and the hand-written docs pages (not the bench_*/targets_* tables the benches write)."""
    docs = [p for p in sorted((ROOT / "docs").glob("*.md")) if not p.name.startswith(("bench_", "targets_"))]
    return [README, *docs]


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans, where brackets are not links."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "code", text)


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a markdown page's headings: lower case, punctuation dropped, spaces to
    hyphens, a repeated heading suffixed -1, -2, …"""
    seen: dict[str, int] = {}
    anchors = set()
    body = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", page.read_text(), flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", body, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_the_cli_reference_is_what_the_parser_prints():
    make_cli_docs = _make_cli_docs()
    committed = make_cli_docs.OUTPUT.read_text() if make_cli_docs.OUTPUT.exists() else ""
    made_with = make_cli_docs.recorded_version(committed)
    running = "{}.{}".format(*sys.version_info[:2])
    if made_with is not None and made_with != running:
        pytest.skip(f"docs/cli.md was generated with Python {made_with}'s argparse, whose layout differs from "
                    f"Python {running}'s; compare on {made_with}")
    assert make_cli_docs.render() == committed, \
        "docs/cli.md is out of date with revsde's --help: run python scripts/make_cli_docs.py"


def test_the_readme_is_at_most_300_lines():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, (f"README.md has {lines} lines (at most {README_MAX_LINES}): move reference "
                                       "material to docs/ and measurements to docs/benchmarks.md")


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_heading(page):
    broken = []
    for target in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", _prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        if not where.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and where.suffix == ".md" and anchor not in _anchors(where):
            broken.append(f"{target} (no heading #{anchor} in {where.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: " + "; ".join(broken)


def test_the_anchor_rule_matches_githubs_on_the_headings_this_repository_uses(tmp_path):
    """A smoke test of the slug rule the link test relies on, on headings of the shapes used here."""
    page = tmp_path / "page.md"
    page.write_text("# The Python library\n## Samplers (`revsde.samplers`)\n## `revsde sample --diffusers`\n"
                    "### MR: `mrs` at few NFE\n## Speed\n## Speed\n```\n# not a heading\n```\n")
    assert _anchors(page) == {"the-python-library", "samplers-revsdesamplers", "revsde-sample---diffusers",
                              "mr-mrs-at-few-nfe", "speed", "speed-1"}
