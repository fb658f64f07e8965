"""What the report says a run found: the rows each stage worked on, the crystals by
dimension and net, and a picture of each lowest-energy new candidate.

The pictures are ASE's PNG renderer (matplotlib, no browser plug-in), embedded
in the page as base64, beside the candidate's space group, net, dimension and
energy; a candidate is a unique crystal that is not known (``known_id`` null;
every unique crystal when dedup had no known table).
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import pandas as pd
from ase import Atoms

from .. import schema as S
from ..crystal import fingerprint as F
from .query import columns

N_PICTURES = 6
MAX_PICTURE_ATOMS = 150      # a small cell is repeated up to about this many atoms


def lowest_new(con: Any, tables: set[str], model: str | None, n: int = N_PICTURES
               ) -> pd.DataFrame:
    """The ``n`` unique new crystals lowest in energy above graphite with ``model``
    (its first row of each): the ranked row joined with the fingerprint's spg and net."""
    if not model or S.FINGERPRINTS not in tables or S.RANKED not in tables:
        return pd.DataFrame()
    fp_cols = columns(con, S.FINGERPRINTS)
    e_above = f"{S.E_ABOVE}{model}"
    if e_above not in columns(con, S.RANKED) or S.TOPOLOGY_KEY not in fp_cols:
        return pd.DataFrame()
    new = f"AND f.{S.KNOWN_ID} IS NULL" if S.KNOWN_ID in fp_cols else ""
    return con.execute(f"""
        SELECT r.*, f.{S.FP_SPG} AS fp_spg_, f.{S.DIMENSION} AS dim_,
               f.{S.TOPOLOGY} AS net_, f.{S.TOPOLOGY_KEY} AS key_
        FROM {S.FINGERPRINTS} f JOIN {S.RANKED} r ON f.{S.ID} = r.{S.ID}
        WHERE f.{S.FP_DATA} IS NOT NULL AND r."{e_above}" IS NOT NULL {new}
        ORDER BY r."{e_above}" LIMIT {int(n)}""").df()


def picture(atoms: Atoms) -> str:
    """A PNG of a crystal, base64: repeated to a few unit cells, seen slightly from
    the side, its bonds (the environment check's rule) as sticks, nearer atoms
    drawn over farther ones and lighter, the repeated cell's edges dashed."""
    import itertools

    import numpy as np
    from ase.neighborlist import neighbor_list
    from ase.utils import rotate
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    from ..crystal.environment import BOND_FACTOR, covalent_radius

    reps = max(1, int((MAX_PICTURE_ATOMS / max(len(atoms), 1)) ** (1 / 3)))
    shown = atoms.repeat(min(reps, 2)) if reps > 1 else atoms.copy()
    shown.pbc = False                       # bonds inside the picture only
    radii = [BOND_FACTOR * covalent_radius(s) for s in shown.get_chemical_symbols()]
    i, j = neighbor_list("ij", shown, radii)
    rot = rotate("-70x,20y,0z")
    xyz = shown.positions @ rot.T
    corners = np.array(list(itertools.product((0, 1), repeat=3))) @ shown.cell.array @ rot.T
    edges = [(a, b) for a, b in itertools.combinations(range(8), 2)
             if bin(a ^ b).count("1") == 1]
    fig = Figure(figsize=(3, 3), dpi=120)
    ax = fig.add_subplot()
    ax.add_collection(LineCollection([corners[[a, b], :2] for a, b in edges],
                                     colors="0.6", linestyles="dashed", linewidths=0.6))
    ax.add_collection(LineCollection([xyz[[a, b], :2] for a, b in zip(i, j) if a < b],
                                     colors="0.25", linewidths=1.2))
    order = np.argsort(xyz[:, 2])
    depth = np.ptp(xyz[:, 2]) or 1.0
    shade = 0.35 + 0.45 * (xyz[order, 2] - xyz[:, 2].min()) / depth
    ax.scatter(xyz[order, 0], xyz[order, 1], s=40 if len(shown) < 60 else 20,
               c=[(s, s, s + 0.1) for s in shade], edgecolors="k", linewidths=0.4, zorder=3)
    ax.set_aspect("equal")
    ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def candidates_html(rows: pd.DataFrame, model: str) -> str:
    """A figure per candidate: its picture, id, space group, net, dimension, energy."""
    if rows.empty:
        return ""
    figs = []
    for rec in rows.to_dict("records"):
        try:
            png = picture(F.row_atoms(rec, model))
        except Exception as exc:  # a row that cannot be drawn is named, not fatal
            png, why = None, f"{type(exc).__name__}: {exc}"
        net = rec["net_"] or (f"key {rec['key_']}" if rec["key_"] else "–")
        text = (f"{rec[S.ID]}<br>spg {rec['fp_spg_']}, net {net}, {rec['dim_']}D<br>"
                f"{rec[f'{S.E_ABOVE}{model}']:.3f} eV/atom above graphite ({model})")
        img = (f'<img alt="{html.escape(str(rec[S.ID]))}" src="data:image/png;base64,{png}">'
               if png else f"<p>{html.escape(why)}</p>")
        figs.append(f'<figure style="display:inline-block;width:30%;vertical-align:top">'
                    f"{img}<figcaption>{text}</figcaption></figure>")
    return (f"<h2>Lowest-energy new candidates ({html.escape(model)})</h2>"
            + "".join(figs))


def processed_lines(processed: dict[str, dict[str, Any]]) -> list[str]:
    """Sentences saying how many rows each stage worked on, e.g. "prerelaxed: 16 of
    2,000 rows pre-relaxed (limit 16); 10 reached the environment"."""
    lines = []
    for table, e in processed.items():
        rows, done = e["rows"], e.get("processed")
        if table == S.PRERELAXED and done is not None:
            limit = f" (limit {e['limit']:,})" if e.get("limit") is not None else ""
            reached = (f"; {e['reached']:,} reached the environment"
                       if e.get("reached") is not None else "")
            lines.append(f"{table}: {done:,} of {rows:,} rows pre-relaxed{limit}{reached}")
        elif table == S.OPTIMIZED and e.get("reached") is not None:
            rounds = e.get("by_round", {})
            each = ", ".join(f"round {r}: {n:,}" for r, n in rounds.items())
            lines.append(f"{table}: {e['reached']:,} of {rows:,} rows in the environment, "
                         f"{sum(rounds.values()):,} of them reached in the rounds"
                         + (f" ({each})" if each else ""))
        elif isinstance(done, dict):
            lines.append(f"{table}: {rows:,} rows; relaxed with "
                         + ", ".join(f"{m} {k:,}" for m, k in done.items()))
        elif done is not None:
            lines.append(f"{table}: {done:,} of {rows:,} rows fingerprinted")
        else:
            lines.append(f"{table}: {rows:,} rows")
    return lines


def novelty_html(novelty: dict[str, Any]) -> str:
    """The unique crystals by dimension and their most frequent nets."""
    if not novelty:
        return ""
    dims = "".join(f"<tr><td>{html.escape(d)}D</td><td>{n}</td></tr>"
                   if d != "-1" else f"<tr><td>no net</td><td>{n}</td></tr>"
                   for d, n in novelty.get("by_dimension", {}).items())
    nets = "".join(f"<tr><td>{html.escape(str(lab))}</td><td>{n}</td></tr>"
                   for lab, n in novelty.get("top_nets", []))
    return ("<h2>Unique crystals by dimension and net</h2>"
            '<table style="display:inline-table;margin-right:2em">'
            f"<tr><th>dimension</th><th>crystals</th></tr>{dims}</table>"
            '<table style="display:inline-table">'
            f"<tr><th>net (RCSR name or topology key)</th><th>crystals</th></tr>{nets}</table>")
