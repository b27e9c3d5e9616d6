"""Render the report's blocks as Markdown; figures are linked by path relative to the run."""

from __future__ import annotations

from pathlib import Path

from finetune.report.document import Block, Bullets, Heading, Paragraph, Verdict
from finetune.report.plots import Figure
from finetune.report.tables import Table


def escape(text: str) -> str:
    """Keep results' text literal: no raw HTML from a system name, no broken table cells."""
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
        .replace("\n", " ")
    )


def _table(table: Table) -> list[str]:
    def row(cells: list[str], bold: bool = False) -> str:
        cells = [f"**{escape(c)}**" if bold and c else escape(c) for c in cells]
        return "| " + " | ".join(cells) + " |"

    lines = [row(table.columns), "| " + " | ".join("---" for _ in table.columns) + " |"]
    lines += [row(r, bold=i in table.highlight) for i, r in enumerate(table.rows)]
    return lines


def _block(block: Block, base: Path) -> list[str]:
    if isinstance(block, Heading):
        return ["#" * block.level + " " + escape(block.text)]
    if isinstance(block, Paragraph):
        return [escape(block.text)]
    if isinstance(block, Bullets):
        return [f"- {escape(item)}" for item in block.items]
    if isinstance(block, Verdict):
        findings = [f"> - {escape(s)}" for s in block.findings]
        notes = [line for c in block.cautions for line in (">", f"> **Caution:** {escape(c)}")]
        return [*findings, ">", f"> **{escape(block.bottom_line)}**", *notes]
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        link = block.path.relative_to(base).as_posix()
        return [f"![{escape(block.caption)}]({link})", "", f"*{escape(block.caption)}*"]
    raise TypeError(f"unknown report block {block!r}")


def render_markdown(blocks: list[Block], base: Path) -> str:
    return "\n\n".join("\n".join(_block(b, base)) for b in blocks) + "\n"
