"""The front of a search as files: CSV, JSON, a PNG scatter per objective pair, and an interactive HTML page."""

from __future__ import annotations

import csv
import html
import itertools
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .pareto import nondominated_ranks, to_minimize

__all__ = ["TrialRow", "Front", "compute_front", "write_front", "format_table", "wrap_summary", "SUMMARY_WIDTH"]

#: Architecture summaries (:meth:`nas.architecture.Architecture.summary`) longer than this wrap onto more lines
#: in the text table and the plots, at spaces only; the CSV and JSON keep them whole.
SUMMARY_WIDTH = 60


def wrap_summary(summary: str, width: int = SUMMARY_WIDTH) -> list[str]:
    """An architecture summary as lines of at most ``width`` characters, broken between blocks."""
    return textwrap.wrap(summary, width, break_long_words=False, break_on_hyphens=False) or [""]


@dataclass
class TrialRow:
    number: int
    summary: str
    values: list[float]  # objective values, in the spec's order and natural units
    feasible: bool = True
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    verified: bool = False  # the latency values were measured again at the end, with nothing else running


@dataclass
class Front:
    objectives: list[tuple[str, str]]  # (metric, direction)
    rows: list[TrialRow]
    ranks: list[int]  # over all objectives; -1 for infeasible or non-finite
    pair_fronts: dict[str, list[int]]  # "a__vs__b" -> trial numbers on that pair's front

    @property
    def pareto(self) -> list[TrialRow]:
        return [r for r, k in zip(self.rows, self.ranks) if k == 0]


def compute_front(objectives: list[tuple[str, str]], rows: list[TrialRow]) -> Front:
    """Ranks over all objectives together, and the front of every pair of objectives (feasible rows only)."""
    directions = [d for _, d in objectives]
    pts = to_minimize([r.values for r in rows], directions) if rows else np.zeros((0, len(objectives)))
    pts[[not r.feasible for r in rows]] = np.nan
    ranks = nondominated_ranks(pts).tolist()
    pairs: dict[str, list[int]] = {}
    for i, j in itertools.combinations(range(len(objectives)), 2):
        mask = nondominated_ranks(pts[:, [i, j]]) == 0 if len(rows) else np.array([], dtype=bool)
        pairs[f"{objectives[i][0]}__vs__{objectives[j][0]}"] = [r.number for r, m in zip(rows, mask) if m]
    return Front(objectives, rows, ranks, pairs)


def format_table(front: Front, only_front: bool = True) -> str:
    """The front (or every row) as an aligned text table, best first on the first objective."""
    rows = [(r, k) for r, k in zip(front.rows, front.ranks) if k == 0 or not only_front]
    first_dir = front.objectives[0][1]
    rows.sort(key=lambda rk: rk[0].values[0] * (-1 if first_dir == "maximize" else 1))
    headers = ["trial", "architecture"] + [f"{m} ({'max' if d == 'maximize' else 'min'})" for m, d in front.objectives]
    verified = any(r.verified for r, _ in rows)
    if verified:
        headers.append("latency")
    if not only_front:
        headers.append("rank")
    body = []
    for r, k in rows:
        first, *more = wrap_summary(r.summary)
        line = [str(r.number), first] + [f"{v:.4g}" for v in r.values]
        if verified:  # whether its latency is the value measured again alone at the end, or the first one
            line.append("verified" if r.verified else "first run")
        body.append(line + ([str(k)] if not only_front else []))
        body += [["", part] + [""] * (len(line) - 2 + (0 if only_front else 1)) for part in more]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
                     + [fmt.format(*b).rstrip() for b in body])


def write_front(front: Front, folder: Path, hypervolume: float | None, reference: list[float] | None) -> list[Path]:
    """Write front.csv, front.json, one PNG per objective pair and front.html into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [m for m, _ in front.objectives]
    written = []

    path = folder / "front.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "architecture", *names, "feasible", "pareto_rank", *front.pair_fronts])
        for r, k in zip(front.rows, front.ranks):
            w.writerow([r.number, r.summary, *r.values, r.feasible, k,
                        *[r.number in members for members in front.pair_fronts.values()]])
    written.append(path)

    path = folder / "front.json"
    path.write_text(json.dumps({
        "objectives": [{"metric": m, "direction": d} for m, d in front.objectives],
        "hypervolume": hypervolume, "reference_point": reference,
        "front": [_row_json(r) for r in front.pareto],
        "pair_fronts": front.pair_fronts,
        "trials": [{**_row_json(r), "pareto_rank": k} for r, k in zip(front.rows, front.ranks)],
    }, indent=2))
    written.append(path)
    written += _plots(front, folder)
    path = folder / "front.html"
    path.write_text(_html(front))
    written.append(path)
    return written


def _row_json(r: TrialRow) -> dict[str, Any]:
    return {"trial": r.number, "architecture": r.summary, "values": r.values, "feasible": r.feasible,
            "run_id": r.run_id}


def _plots(front: Front, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for (i, (a, _)), (j, (b, _)) in itertools.combinations(enumerate(front.objectives), 2):
        members = set(front.pair_fronts[f"{a}__vs__{b}"])
        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
        others = [r for r in front.rows if r.number not in members]
        best = sorted((r for r in front.rows if r.number in members), key=lambda r: r.values[i])
        ax.scatter([r.values[i] for r in others], [r.values[j] for r in others], c="0.6", s=22, label="trials")
        ax.plot([r.values[i] for r in best], [r.values[j] for r in best], "o-", c="tab:red", label="Pareto front")
        for r in best:
            ax.annotate("\n".join(wrap_summary(f"{r.number}: {r.summary}", 40)), (r.values[i], r.values[j]), fontsize=6,
                        textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel(a)
        ax.set_ylabel(b)
        ax.set_title(f"{b} vs {a}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = folder / f"front_{a}__vs__{b}.png"
        fig.savefig(path)
        plt.close(fig)
        out.append(path)
    return out


def _html(front: Front) -> str:
    """A self-contained page: one SVG scatter per objective pair; hover a point for its trial, click a
    point to highlight that trial in every plot."""
    plots = []
    W, H, P = 420, 320, 48
    for (i, (a, _)), (j, (b, _)) in itertools.combinations(enumerate(front.objectives), 2):
        members = set(front.pair_fronts[f"{a}__vs__{b}"])
        xs = [r.values[i] for r in front.rows]
        ys = [r.values[j] for r in front.rows]
        if not xs:
            continue
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        sx = lambda v: P + (W - 2 * P) * ((v - x0) / (x1 - x0) if x1 > x0 else 0.5)  # noqa: E731
        sy = lambda v: H - P - (H - 2 * P) * ((v - y0) / (y1 - y0) if y1 > y0 else 0.5)  # noqa: E731
        dots = []
        for r in front.rows:
            on = r.number in members
            tip = html.escape(f"trial {r.number}: {r.summary}\n{a}={r.values[i]:.4g}\n{b}={r.values[j]:.4g}")
            dots.append(f'<circle class="t{r.number}" cx="{sx(r.values[i]):.1f}" cy="{sy(r.values[j]):.1f}" '
                        f'r="{6 if on else 4}" fill="{"#d62728" if on else "#999"}" '
                        f'onclick="hl({r.number})"><title>{tip}</title></circle>')
        plots.append(
            f'<figure><svg width="{W}" height="{H}"><rect x="{P}" y="{P}" width="{W - 2 * P}" height="{H - 2 * P}" '
            f'fill="none" stroke="#ccc"/>{"".join(dots)}'
            f'<text x="{W / 2}" y="{H - 10}" text-anchor="middle">{html.escape(a)} ({x0:.3g} .. {x1:.3g})</text>'
            f'<text x="12" y="{H / 2}" transform="rotate(-90 12 {H / 2})" text-anchor="middle">'
            f'{html.escape(b)} ({y0:.3g} .. {y1:.3g})</text></svg></figure>'
        )
    table = html.escape(format_table(front, only_front=False))
    return (
        "<!doctype html><meta charset='utf-8'><title>nas front</title>"
        "<style>body{font-family:sans-serif}figure{display:inline-block;margin:8px}"
        "circle{cursor:pointer}circle.hl{stroke:#000;stroke-width:3}</style>"
        "<h1>Pareto fronts</h1><p>Red: on the front of that pair. Hover for details; click to highlight a trial "
        "in every plot.</p>" + "".join(plots) + f"<pre>{table}</pre>"
        "<script>function hl(n){document.querySelectorAll('circle').forEach(c=>c.classList.remove('hl'));"
        "document.querySelectorAll('.t'+n).forEach(c=>c.classList.add('hl'));}</script>"
    )
