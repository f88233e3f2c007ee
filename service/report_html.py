"""The lot report as a self-contained HTML page: tables and inline SVG bar charts (no CDN)."""

from __future__ import annotations

from html import escape
from typing import Any


def _bars(title: str, rows: list[tuple[str, float]], unit: str = "") -> str:
    """A horizontal bar chart as inline SVG."""
    if not rows:
        return f"<h3>{escape(title)}</h3><p class='none'>no data</p>"
    top = max(v for _, v in rows) or 1.0
    h, label_w, bar_w = 22, 130, 360
    parts = [
        f"<h3>{escape(title)}</h3>",
        f"<svg role='img' aria-label='{escape(title)}' width='{label_w + bar_w + 70}' height='{h * len(rows) + 6}'>",
    ]
    for i, (label, v) in enumerate(rows):
        y = i * h + 3
        w = 0 if top == 0 else bar_w * v / top
        parts.append(f"<text x='{label_w - 6}' y='{y + 15}' text-anchor='end'>{escape(label)}</text>")
        parts.append(f"<rect x='{label_w}' y='{y}' width='{w:.1f}' height='{h - 6}' fill='#2f7d4f'/>")
        parts.append(f"<text x='{label_w + w + 6:.1f}' y='{y + 15}'>{v:g}{escape(unit)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def render_lot_report(rep: dict[str, Any]) -> str:
    lot = rep["lot"]
    size, brix = rep["size_mm"], rep["brix"]
    fr, ls = brix["fruit_readings"], brix["lot_samples"]

    def num(v: Any, nd: int = 1) -> str:
        return "–" if v is None else f"{v:.{nd}f}"

    tol_rows = "".join(
        f"<tr><td>{escape(t['grade'])}</td><td>{t['share_below_grade']:.1%}</td><td>{'–' if t['tolerance_below_grade'] is None else format(t['tolerance_below_grade'], '.1%')}</td>"
        f"<td>{t['share_decayed']:.1%}</td><td>{'–' if t['tolerance_decayed'] is None else format(t['tolerance_decayed'], '.1%')}</td>"
        f"<td class='{'ok' if t['meets'] else 'bad' if t['meets'] is False else ''}'>{'meets' if t['meets'] else 'fails' if t['meets'] is False else '–'}</td></tr>"
        for t in rep["tolerances"]
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Lot {escape(lot["id"])} — grower report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 1.5rem; color: #1c2421; max-width: 980px; }}
h1 {{ font-size: 1.4rem; margin-bottom: .2rem; }} h3 {{ margin: 1.2rem 0 .3rem; font-size: 1rem; }}
table {{ border-collapse: collapse; margin: .4rem 0; }} td, th {{ border-bottom: 1px solid #d5dcd8; padding: .25rem .7rem; text-align: left; }}
svg text {{ font: 12px system-ui, sans-serif; fill: #1c2421; }} .ok {{ color: #1d6b3a; font-weight: 600; }} .bad {{ color: #a3261c; font-weight: 600; }}
.meta {{ color: #4b5853; }} .grid {{ display: flex; flex-wrap: wrap; gap: 1rem 3rem; }}
</style></head><body>
<h1>Lot {escape(lot["id"])}</h1>
<p class="meta">{escape(lot["grower"] or "")} · block {escape(lot["orchard_block"] or "–")} · {escape(lot["variety"] or "")} {escape(lot["commodity"])}
 · harvested {escape(lot["harvest_date"] or "–")} · standard {escape(rep["standard"]["id"])} ({escape(rep["standard"]["version"])}) · {escape(lot["status"])}</p>
<table><tr><th>fruit graded</th><th>defect rate</th><th>flagged for inspection</th><th>examined</th><th>mean diameter</th><th>mean Brix (fruit / lot samples)</th></tr>
<tr><td>{rep["fruit"]}</td><td>{rep["defect_rate"]:.1%}</td><td>{rep["flagged"]}</td><td>{rep["examined"]}</td><td>{num(size["mean"])} mm</td>
<td>{num(fr["mean"])} (n={fr["n"]}) / {num(ls["mean"])} (n={ls["n"]}, sd {num(ls["sd"], 2)})</td></tr></table>
<div class="grid"><div>{_bars("Pack-out by grade", [(g["grade"], g["count"]) for g in rep["by_grade"]])}</div>
<div>{_bars("Size bands (mm)", [(f"{b['from']:g}–{b['to']:g}", b["count"]) for b in size["histogram"]])}</div>
<div>{_bars("Brix distribution (°Brix)", [(f"{b['from']:g}–{b['to']:g}", b["count"]) for b in brix["histogram"]])}</div>
{f"<div>{_bars('Defects seen', list(rep['by_defect'].items()))}</div>" if rep.get("by_defect") else ""}</div>
<h3>Lot tolerances</h3>
<table><tr><th>class</th><th>below class</th><th>allowed</th><th>decayed</th><th>allowed</th><th>verdict</th></tr>{tol_rows}</table>
</body></html>"""
