"""HTML building blocks of the run report: escaping, tables, figures and the page around the sections."""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


class Missing(Exception):
    """A section's input is not in the warehouse for the date: the message says which job builds it."""


@dataclass
class Rendered:
    """A section's HTML, in parts, and the figures its ``<img>`` tags name (written beside the page)."""

    parts: list[str] = field(default_factory=list)
    figures: list[tuple[str, Any]] = field(default_factory=list)

    def add(self, *parts: str) -> Rendered:
        self.parts.extend(parts)
        return self

    def figure(self, name: str, fig: Any, alt: str) -> Rendered:
        self.figures.append((name, fig))
        return self.add(img(name, alt))

    def missing(self, reason: Missing | str) -> Rendered:
        """A part of the section whose input is missing: the reason in place of the part."""
        return self.add(f'<p class="missing">{esc(reason)}</p>')

    @property
    def html(self) -> str:
        return "".join(self.parts)


def esc(x: object) -> str:
    return html.escape(str(x))


def anchor(title: str) -> str:
    return title.lower().replace(" ", "-")


def table(df: pd.DataFrame, floats: int = 4) -> str:
    """A pandas frame as an HTML table (escaped; floats rounded, float columns holding only whole
    numbers as integers; thousands separators)."""
    whole = {
        c
        for c in df.columns
        if df[c].dtype.kind == "f" and df[c].notna().any() and np.all(np.mod(df[c].dropna().to_numpy(), 1) == 0)
    }

    def fmt(v, col):
        if isinstance(v, (float, np.floating)):
            if not np.isfinite(v):
                return "–"
            return f"{v:,.0f}" if col in whole else f"{v:,.{floats}f}"
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return f"{v:,}"
        return esc(v)

    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{fmt(v, c)}</td>" for v, c in zip(row, df.columns, strict=True)) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img(name: str, alt: str) -> str:
    return f'<figure><img src="{esc(name)}" alt="{esc(alt)}"><figcaption>{esc(alt)}</figcaption></figure>'


def section(title: str, content: str) -> str:
    return f'<section id="{anchor(title)}"><h2>{esc(title)}</h2>{content}</section>'


def missing_section(as_of: dt.date, reason: Missing) -> str:
    return f'<p class="missing">Not in this warehouse for {as_of}: {esc(reason)}</p>'


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1280px;
       padding: 0 24px 48px; color: #222; }
header { border-bottom: 2px solid #4c72b0; margin-bottom: 8px; }
h1 { margin: 18px 0 4px; } h2 { border-bottom: 1px solid #ddd; padding-top: 18px; }
nav { position: sticky; top: 0; background: #fff; padding: 6px 0; border-bottom: 1px solid #eee; z-index: 1; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 12.5px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f6fa; } td { max-width: 520px; overflow-wrap: anywhere; }
table.nb td { min-width: 160px; }
figure { margin: 8px 0; display: inline-block; } img { max-width: 100%; }
figcaption { font-size: 12px; color: #666; } .row { display: flex; flex-wrap: wrap; gap: 16px; }
.missing { color: #a33; } code { background: #f4f4f4; padding: 0 3px; } small { color: #666; }
"""


def page(as_of: dt.date, warehouse: str, run_id: str, titles: list[str], body: list[str]) -> str:
    """The whole page: header, a navigation bar over the section titles, the sections."""
    nav = " · ".join(f'<a href="#{anchor(t)}">{esc(t)}</a>' for t in titles)
    made = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>recfactory report {as_of}</title>
<style>{CSS}</style></head><body>
<header><h1>recfactory report — {as_of}</h1>
<p>Warehouse <code>{esc(warehouse)}</code> · report run <code>{run_id[:12]}</code> · made {made}</p>
</header><nav>{nav}</nav>
{"".join(body)}
</body></html>
"""
