"""Render the report's blocks as one self-contained HTML file.

Opened offline: the CSS is inline, every figure is a base64 `data:image/png` URI, and there
are no scripts, fonts or external URLs. All text is escaped with `html.escape`.
"""

from __future__ import annotations

import base64
import html
import re

from finetune.report.document import Block, Bullets, Heading, Paragraph, Verdict
from finetune.report.plots import Figure
from finetune.report.tables import Table

CSS = """
body { margin: 0; background: #f6f7f9; color: #1d2330;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 1.6em; margin: 0.4em 0 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #dde1e7; padding-bottom: 4px; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
code { font: 0.9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  background: #eef0f3; padding: 1px 4px; border-radius: 3px; }
.verdict { background: #fff8e1; border-left: 5px solid #f0a500; padding: 10px 18px;
  border-radius: 4px; }
.verdict ul { margin: 0.3em 0; padding-left: 1.2em; }
.verdict li { margin: 0.25em 0; }
.verdict .bottom { font-weight: 600; margin: 0.6em 0 0.2em; }
.verdict .caution { background: #fdecea; border-left: 4px solid #c62828; padding: 6px 10px;
  margin: 0.6em 0 0.2em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em;
  font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #cfd5dd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #e9edf2; }
tbody tr:nth-child(even) { background: #f7f9fb; }
td.num { white-space: nowrap; }
tr.specialist td { background: #fdecea; font-weight: 600; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e6ea; }
figcaption { font-size: 0.9em; color: #55606e; }
"""


def _text(text: str) -> str:
    """Escaped text with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _cell_class(cell: str) -> str:
    """Numbers and intervals stay on one line."""
    return ' class="num"' if re.match(r"[-+$]?\d", cell) else ""


def _table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows = []
    for i, row in enumerate(table.rows):
        cls = ' class="specialist"' if i in table.highlight else ""
        cells = "".join(f"<td{_cell_class(c)}>{html.escape(c)}</td>" for c in row)
        rows.append(f"<tr{cls}>{cells}</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _figure(figure: Figure) -> str:
    data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    caption = html.escape(figure.caption)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{_text(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{_text(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_text(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Verdict):
        items = "".join(f"<li>{_text(s)}</li>" for s in block.findings)
        bottom = f'<p class="bottom">{_text(block.bottom_line)}</p>'
        notes = "".join(f'<p class="caution">{_text(c)}</p>' for c in block.cautions)
        return f'<section class="verdict"><ul>{items}</ul>{bottom}{notes}</section>'
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return _figure(block)
    raise TypeError(f"unknown report block {block!r}")


def render_html(blocks: list[Block], title: str) -> str:
    body = "\n".join(_block(b) for b in blocks)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )
