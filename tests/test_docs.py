"""The documentation a newcomer reads: README.md is short (at most 250 lines) with a table of
contents, and every relative link of README.md and docs/*.md leads to a file that exists,
and to a heading of that file when it names one (GitHub's anchors)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _without_code(text: str) -> str:
    """The text without fenced code blocks and inline code (links there are not links)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> Set[str]:
    """The anchors GitHub gives the headings of ``path``: lower case, punctuation dropped
    (but - and _), spaces to -, a repeated one suffixed -1, -2, ..."""
    out: Set[str] = set()
    for line in re.sub(r"```.*?```", "", path.read_text(), flags=re.S).splitlines():
        m = re.match(r"#{1,6} (.*)", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        base, k = slug, 0
        while slug in out:
            k += 1
            slug = f"{base}-{k}"
        out.add(slug)
    return out


def broken_links(path: Path) -> List[Tuple[str, str]]:
    bad = []
    for target in LINK.findall(_without_code(path.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append((target, "no such file"))
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append((target, f"no heading #{anchor} in {dest.name}"))
    return bad


def test_every_relative_link_resolves():
    bad = {str(p.relative_to(ROOT)): b for p in DOCS if (b := broken_links(p))}
    assert not bad, f"broken links: {bad}"


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "a.md").write_text("# A\n\n## Two words\n")
    doc = tmp_path / "b.md"
    doc.write_text("[ok](a.md#two-words) [file](nope.md) [head](a.md#three) [self](#b)\n"
                   "`[code](nope.md)` [web](https://example.org/x)\n\n# B\n")
    assert broken_links(doc) == [("nope.md", "no such file"),
                                 ("a.md#three", "no heading #three in a.md")]


def test_the_readme_is_short_with_a_table_of_contents():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    toc = text.split("\n## Contents\n", 1)[1].split("\n## ", 1)[0]
    linked = re.findall(r"\]\(#([^)]+)\)", toc)
    assert len(linked) >= 8 and set(linked) <= anchors(ROOT / "README.md")
    for doc in ("app", "cli", "python-api", "teaching", "contributing", "testing"):
        assert f"](docs/{doc}.md" in text, f"README links no docs/{doc}.md"
