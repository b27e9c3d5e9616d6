"""The documentation: the generated reference blocks match the schemas and the CLI, the README
stays short, its annotated recipe is the default recipe, and every relative link between the
pages (README.md and docs/*.md) resolves, to a file and, with `#anchor`, to one of its headings.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from conftest import REPO

from finetune.docs import rendered, stale

README_MAX_LINES = 300
# [text](target) and ![alt](target); the target ends at whitespace (a title) or `)`.
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")


def pages(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) for the lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.split("\n"), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def links(line: str) -> list[str]:
    """The link targets in a line of prose, leaving out those inside inline code."""
    return LINK.findall(re.sub(r"`[^`]*`", "", line))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link markup and HTML tags reduced to their text,
    lower-cased, punctuation dropped but for `-` and `_`, each space a `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor, repeated headings numbered as GitHub numbers them (`-1`, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(text):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(1))
            found.add(f"{base}-{seen[base]}" if base in seen else base)
            seen[base] = seen.get(base, 0) + 1
    return found


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    """`file:line: [link] ...` for each relative link in `page` whose file or heading is missing."""
    problems = []
    for number, line in prose_lines(page.read_text()):
        for target in links(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
                continue
            problem = _missing(page, target)
            if problem:
                problems.append(f"{page.relative_to(root)}:{number}: ({target}) {problem}")
    return problems


def _missing(page: Path, target: str) -> str | None:
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
        return f"{file} does not exist"
    if anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
        return f"{file.name} has no heading with the anchor #{anchor}"
    return None


def test_generated_blocks_are_current():
    assert not stale(REPO), "generated docs are stale: run `.venv/bin/python -m finetune.docs`"


def test_every_generated_page_has_its_blocks():
    pages = {path.relative_to(REPO).as_posix() for path in rendered(REPO)}
    assert pages == {"README.md", "docs/recipe-reference.md", "docs/experiments.md"}


def test_every_recipe_key_and_command_is_documented():
    reference = (REPO / "docs" / "recipe-reference.md").read_text()
    for key in ("`train.completion_only`", "`data.max_validation_examples`", "`lora.use_dora`"):
        assert key in reference
    assert "`executor.kind`" in (REPO / "docs" / "experiments.md").read_text()
    readme = (REPO / "README.md").read_text()
    for command in ("finetune train", "finetune export", "finetune eval", "finetune report"):
        assert f"`{command} " in readme


def test_readme_is_short():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_every_relative_link_resolves():
    checked = sum(len(links(line)) for page in pages() for _, line in prose_lines(page.read_text()))
    assert checked > 50, f"only {checked} links found: is the link pattern still right?"
    problems = [problem for page in pages() for problem in broken_links(page)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_docs_index_lists_every_page():
    index = (REPO / "docs" / "README.md").read_text()
    linked = {target.partition("#")[0] for _, line in prose_lines(index) for target in links(line)}
    missing = {p.name for p in pages()[1:] if p.name != "README.md"} - linked
    assert not missing, f"docs/README.md does not link {sorted(missing)}"


def test_broken_links_are_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# There\n\n## A section: with `code`\n")
    page = tmp_path / "README.md"
    page.write_text(
        "Fine: [there](docs/there.md), [section](docs/there.md#a-section-with-code),\n"
        "[web](https://example.com/missing.md), `[code](nowhere.md)`, [self](#top).\n"
        "```\n[fenced](nowhere.md)\n```\n"
        "# Top\n\n"
        "Broken: [gone](docs/gone.md) and [bad anchor](docs/there.md#no-such-heading).\n"
        "![image](img/missing.png) [here](#nothing)\n"
    )
    problems = broken_links(page, tmp_path)
    assert [p.split(" ", 1)[0] for p in problems] == [
        "README.md:8:",
        "README.md:8:",
        "README.md:9:",
        "README.md:9:",
    ]
    assert "(docs/gone.md)" in problems[0] and "does not exist" in problems[0]
    assert "(docs/there.md#no-such-heading)" in problems[1] and "no heading" in problems[1]
    assert "(img/missing.png)" in problems[2]
    assert "(#nothing)" in problems[3]


def test_slugs_follow_github():
    assert slug("The local engine: big open models on llama.cpp") == (
        "the-local-engine-big-open-models-on-llamacpp"
    )
    assert slug("The default recipe: `make demo`") == "the-default-recipe-make-demo"
    assert slug("More processes: DDP and FSDP") == "more-processes-ddp-and-fsdp"
    assert slug("A [linked](x.md) heading") == "a-linked-heading"
    assert anchors("# Usage\n## Usage\n```\n# not a heading\n```\n") == {"usage", "usage-1"}


def test_the_annotated_recipe_is_the_default_recipe():
    default = re.search(r"^RECIPE \?= (\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    annotated = [yaml.safe_load(b) for b in blocks if re.match(rf"name: {Path(default).stem}\s", b)]
    assert annotated, f"README.md has no yaml block of {default}"
    assert annotated[0] == yaml.safe_load((REPO / default).read_text())
