"""Every relative link of README.md and docs/*.md points at an existing file (and heading).

Links inside code (fenced blocks, inline code) are not links; web links are not checked.
A link to ``file.md#anchor`` or ``#anchor`` must name a heading of that file, by GitHub's rule
for heading anchors (lower case, punctuation dropped, spaces as hyphens, ``-1`` for repeats).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md")])

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
# Repository files named in text or code ("python tools/train.py", `benchmarks/gpu_check.sh`).
REPO_PATH = re.compile(r"(?<![\w./-])((?:tools|benchmarks|configs|rtdetr_spartan|tests)/[\w./-]+\.(?:py|sh|yml))\b")
PLACEHOLDERS = {"configs/rtdetr/my_dataset.yml"}  # the reader's own config, in an example
WEB = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def prose(markdown: str) -> str:
    """``markdown`` without its code: fenced blocks and inline code spans."""
    return INLINE_CODE.sub("", FENCE.sub("", markdown))


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown``."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for title in HEADING.findall(FENCE.sub("", markdown)):  # a `# comment` in a bash block is no heading
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title).replace("`", "")  # link text, code text
        slug = "".join(ch for ch in text.lower() if ch.isalnum() or ch in " -_").replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def broken_links(document: Path) -> list[str]:
    """Each relative link of ``document`` whose file or heading does not exist, with the reason."""
    problems = []
    for target in LINK.findall(prose(document.read_text(encoding="utf-8"))):
        if WEB.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        if not linked.exists():
            problems.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text(encoding="utf-8")):
            problems.append(f"{target}: {linked.name} has no heading with anchor #{anchor}")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_relative_links_point_at_existing_files(document: Path) -> None:
    assert broken_links(document) == []


def missing_repository_files(document: Path) -> list[str]:
    """Each repository path ``document`` names (tools, benchmarks, configs, package, tests) that does not exist."""
    named = set(REPO_PATH.findall(document.read_text(encoding="utf-8"))) - PLACEHOLDERS
    return sorted(path for path in named if not (REPO_ROOT / path).exists())


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_named_repository_files_exist(document: Path) -> None:
    assert missing_repository_files(document) == []


def test_repository_paths_are_found_in_text_and_code() -> None:
    text = "run `python tools/train.py` or bash benchmarks/none.sh; not docs/x.py nor a/tools/y.py"
    assert REPO_PATH.findall(text) == ["tools/train.py", "benchmarks/none.sh"]


def test_the_check_finds_broken_links_and_ignores_code(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## Its part (one, two)\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md) [fine too](other.md#its-part-one-two) [here](#page) [web](https://example.org/x)\n"
        "[missing](gone.md) ![missing picture](img/none.png) [bad anchor](other.md#nothing)\n"
        "`[in code](gone_too.md)`\n\n```bash\n# [in a block](gone_three.md)\n```\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert [problem.split(":")[0] for problem in problems] == ["gone.md", "img/none.png", "other.md#nothing"]


def test_heading_anchors_follow_github() -> None:
    markdown = "# rtdetr-spartan\n## Train\n## Train\n### SpaRTAN-T / R18, 640 x 640 (`--static`)\n```\n# no\n```\n"
    assert heading_anchors(markdown) == {"rtdetr-spartan", "train", "train-1", "spartan-t--r18-640-x-640---static"}


DOCS_PAGE = re.compile(r"(?<![\w./-])docs/[\w-]+\.md\b")


def test_docs_pages_named_by_code_exist() -> None:
    # Error messages and docstrings send users to docs pages; a moved page must not leave them stranded.
    sources = [*(REPO_ROOT / "rtdetr_spartan").rglob("*.py"), *(REPO_ROOT / "benchmarks").glob("*.*")]
    named = {
        (source.name, page) for source in sources for page in DOCS_PAGE.findall(source.read_text(encoding="utf-8"))
    }
    assert len(named) >= 3  # docs/troubleshooting.md, docs/pretraining.md, docs/results.md at least
    assert sorted((name, page) for name, page in named if not (REPO_ROOT / page).exists()) == []
