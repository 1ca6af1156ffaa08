"""The report as one self-contained HTML page and as Markdown.

Why self-contained: the page is mailed, archived and opened on machines without network;
every figure is embedded as a base64 PNG data URI and the CSS is inline, so the page has no
reference to anything outside itself (no scripts, fonts, stylesheets or images fetched from
anywhere; tested by parsing). report.md is the README-friendly twin: same tables, figures
referenced as files relative to the report folder.

No timestamps are written, so rerunning the report on the same inputs gives the same bytes.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from fvtool.reporting.tables import Table, to_html, to_markdown

_CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; margin: 2em auto;
       max-width: 1320px; padding: 0 1em; color: #1d2329; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: .85em; margin: .6em 0; }
th, td { border: 1px solid #d0d7de; padding: .3em .55em; text-align: left; vertical-align: top; }
th { background: #f3f5f7; }
td:first-child { white-space: nowrap; }
tr:nth-child(even) td { background: #fafbfc; }
td.best { font-weight: bold; background: #e6f4ea !important; }
td.worse { background: #fdecea !important; }
td.note { font-style: italic; color: #8a1c1c; }
.footnote, .caption { font-size: .82em; color: #57606a; }
figure { margin: 1em 0 2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
code { background: #f3f5f7; padding: 0 .25em; }
ul.files { font-size: .82em; color: #57606a; }
"""


@dataclass
class FigureItem:
    """A figure the report shows: its files by format (the PNG is embedded) and a caption."""

    title: str
    files: dict[str, Path]
    caption: str = ""


@dataclass
class Section:
    title: str
    items: list[Table | FigureItem | str] = field(default_factory=list)  # str: a paragraph


@dataclass
class ReportDocument:
    title: str
    intro: list[str]
    sections: list[Section]
    inputs: list[str] = field(default_factory=list)


def _data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}[path.suffix.lower()]
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _embeddable(fig: FigureItem) -> Path:
    for fmt in ("png", "jpg", "jpeg"):
        if fmt in fig.files:
            return fig.files[fmt]
    raise ValueError(f"figure {fig.title!r} has no PNG/JPEG file to embed ({', '.join(fig.files)})")


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in s.lower()).strip("-")


def render_html(doc: ReportDocument) -> str:
    """The page as a string; figures read from their files and embedded."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(doc.title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(doc.title)}</h1>",
    ]
    out += [f"<p>{html.escape(p)}</p>" for p in doc.intro]
    out.append("<nav><ul>" + "".join(
        f'<li><a href="#{_slug(s.title)}">{html.escape(s.title)}</a></li>' for s in doc.sections) + "</ul></nav>")
    for s in doc.sections:
        out.append(f'<h2 id="{_slug(s.title)}">{html.escape(s.title)}</h2>')
        for item in s.items:
            if isinstance(item, Table):
                if item.title and item.title != s.title:
                    out.append(f"<h3>{html.escape(item.title)}</h3>")
                out.append(to_html(item))
            elif isinstance(item, FigureItem):
                other = ", ".join(sorted(f.name for fmt, f in item.files.items() if fmt != "png"))
                files = f" Files: {html.escape(other)}." if other else ""
                out.append(
                    f"<figure><h3>{html.escape(item.title)}</h3>"
                    f'<img src="{_data_uri(_embeddable(item))}" alt="{html.escape(item.title, quote=True)}">'
                    f'<figcaption class="caption">{html.escape(item.caption)}{files}</figcaption></figure>')
            else:
                out.append(f"<p>{html.escape(item)}</p>")
    if doc.inputs:
        out.append("<h2 id=\"inputs\">Inputs</h2><ul class=\"files\">"
                   + "".join(f"<li><code>{html.escape(i)}</code></li>" for i in doc.inputs) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render_markdown(doc: ReportDocument, base: Path) -> str:
    """report.md: the same content, figures as relative links (so it renders in a README/viewer)."""
    out = [f"# {doc.title}", ""]
    for p in doc.intro:
        out += [p, ""]
    for s in doc.sections:
        out += [f"## {s.title}", ""]
        for item in s.items:
            if isinstance(item, Table):
                if item.title and item.title != s.title:
                    out += [f"### {item.title}", ""]
                out += [to_markdown(item)]
            elif isinstance(item, FigureItem):
                rel = Path(os.path.relpath(_embeddable(item), base)).as_posix()
                others = [Path(os.path.relpath(f, base)).as_posix() for fmt, f in sorted(item.files.items())
                          if fmt != "png"]
                out += [f"### {item.title}", "", f"![{item.title}]({rel})", ""]
                cap = item.caption + (f" Also: {', '.join(others)}." if others else "")
                if cap.strip():
                    out += [cap.strip(), ""]
            else:
                out += [item, ""]
    if doc.inputs:
        out += ["## Inputs", "", *[f"- `{i}`" for i in doc.inputs], ""]
    return "\n".join(out).rstrip() + "\n"
