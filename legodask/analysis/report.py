"""The run's report: one self-contained HTML page with the run's plots and counts.

Plots are matplotlib (Agg) PNGs embedded as base64, so the file can be mailed or
opened offline.  The data come from DuckDB queries over the run's tables (unique
crystals only, sampled when there are very many), never from a whole table in
memory:

* the counts funnel and the Table IV row (the run's metrics, computed afresh);
* energy above the ground state of training vs generated crystals (like the paper's
  Fig. 3b): the generated ones with the run's model, the training ones with the same
  model when the training table was ranked, else with the source's VASP energies
  above graphite (SACADA's ``vasp_energy``), labelled as such;
* complexity: energy against atoms in the primitive cell, space group and free
  variables (like Fig. 5), or their histograms when there are no energies;
* the rows each stage worked on, the unique crystals by dimension and net, and
  pictures of the lowest-energy new candidates (``candidates``).
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import pandas as pd

from .. import schema as S
from .. import store
from ..store import Run
from . import candidates as C
from . import metrics as M
from .query import columns, connect

MAX_POINTS = 20_000
# The training source's DFT energies (SACADA's key) and their ground state: graphite
# with VASP r2SCAN, eV/atom (the paper).
VASP_GRAPHITE = -9.355
TRAIN_DFT = (S.VASP_ENERGY, VASP_GRAPHITE, "VASP r2SCAN, from the source")


def load_metrics(run: Run, window: float = M.WINDOW) -> dict[str, Any]:
    """The run's metrics, computed afresh and written to the run's metrics file
    (an overlap matrix already there, from ``metrics --compare``, is kept)."""
    path = run.file(store.METRICS)
    old = json.loads(path.read_text()) if path.exists() else {}
    metrics = M.compute_metrics(run, window)
    if "overlap" in old:
        metrics["overlap"] = old["overlap"]
    M.write_metrics(run, metrics)
    return metrics


def generated(con: Any, tables: set[str], model: str | None) -> pd.DataFrame:
    """Unique generated crystals: atoms in the primitive cell, space group, free
    variables and (when ranked) energy above the ground state; a random sample of
    at most ``MAX_POINTS``."""
    if S.FINGERPRINTS not in tables:
        return pd.DataFrame()
    source = S.RANKED if S.RANKED in tables else None
    cols = columns(con, source) if source else []
    picks = {S.DOF: S.DOF, f"{S.E_ABOVE}{model}": "e_above"}
    extra = "".join(f', r."{c}" AS {name}' for c, name in picks.items() if c in cols)
    join = f'JOIN "{source}" r ON f.{S.ID} = r.{S.ID}' if source else ""
    return con.execute(f"""
        SELECT f.{S.FP_NATOMS} AS {S.NATOMS}, f.{S.FP_SPG} AS {S.SPG} {extra}
        FROM {S.FINGERPRINTS} f {join} WHERE f.{S.FP_DATA} IS NOT NULL
        USING SAMPLE reservoir({MAX_POINTS} ROWS) REPEATABLE (1)""").df()


def training(con: Any, tables: set[str], model: str | None) -> tuple[pd.DataFrame, str]:
    """Training crystals with their energy above the ground state (``e_above``): with
    ``model`` when the source was ranked with it, else the source's DFT energy above
    graphite; and a label saying which."""
    if S.TRAIN_FINGERPRINTS not in tables or S.INGESTED not in tables:
        return pd.DataFrame(), ""
    cols = columns(con, S.INGESTED)
    own, (dft, ground, dft_label) = f"{S.E_ABOVE}{model}", TRAIN_DFT
    if own in cols:
        energy, label = f', i."{own}" AS e_above', f"{model}, this run"
    elif dft in cols:
        energy, label = f', i."{dft}" - ({ground}) AS e_above', dft_label
    else:
        energy, label = "", ""
    dof = f", i.{S.DOF}" if S.DOF in cols else ""
    kept = f"AND i.{S.TRAIN}" if S.TRAIN in cols else ""  # the training set, not all ingested
    return con.execute(f"""
        SELECT t.{S.FP_NATOMS} AS {S.NATOMS}, t.{S.FP_SPG} AS {S.SPG} {dof} {energy}
        FROM {S.TRAIN_FINGERPRINTS} t JOIN {S.INGESTED} i ON t.{S.ID} = i.{S.ID}
        WHERE t.{S.FP_DATA} IS NOT NULL {kept}""").df(), label


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plot_funnel(metrics: dict[str, Any], model: str | None) -> str:
    """Bar chart of the counts, from all samples down to the low-energy ones."""
    import matplotlib.pyplot as plt

    labels, values = [], []
    for c in M.COUNTS:
        v = metrics.get(c)
        if isinstance(v, dict):
            v = v.get(model) if model else None
        if v is not None:
            labels.append(c.replace("n_", "N_"))
            values.append(v)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bars = ax.bar(labels, values, color="#4477aa")
    ax.bar_label(bars, labels=[str(v) for v in values], fontsize=8)
    ax.set_yscale("log" if values and max(values) > 50 * max(1, min(values)) else "linear")
    ax.set_ylabel("structures")
    ax.set_title("Counts" + (f" (low energy: {model})" if model else ""))
    ax.tick_params(axis="x", labelrotation=20)
    return _png(fig)


def plot_energy(gen: pd.DataFrame, train: pd.DataFrame, model: str, train_label: str
                ) -> str | None:
    """Energy above the ground state of training and generated crystals (paper
    Fig. 3b): counts in 0.05 eV/atom bins, each set on its own axis when their sizes
    differ a lot, so that a handful of generated crystals stay visible."""
    import matplotlib.pyplot as plt
    import numpy as np

    series = [(s["e_above"].dropna(), name, colour) for s, name, colour in
              ((train, f"training ({train_label})", "#999999"),
               (gen, f"generated, unique ({model})", "#cc3311"))
              if "e_above" in s.columns]
    series = [t for t in series if len(t[0])]
    if not series:
        return None
    lo = min(0.0, min(float(s.min()) for s, _, _ in series))
    hi = max(float(s.max()) for s, _, _ in series)
    bins = np.arange(np.floor(lo / 0.05) * 0.05, hi + 0.05, 0.05)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    axes = [ax, ax.twinx()] if len(series) == 2 else [ax]
    for a, (s, name, colour) in zip(axes, series):
        a.hist(s, bins=bins, alpha=0.6, color=colour, label=f"{name}: {len(s)}")
        a.set_ylabel("structures", color=colour if len(axes) > 1 else "black")
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel("energy above the ground state (graphite), eV/atom")
    ax.set_title("Energy distribution: training vs generated (cf. Fig. 3b)")
    handles = [h for a in axes for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper right")
    return _png(fig)


def plot_complexity(gen: pd.DataFrame, train: pd.DataFrame, model: str | None,
                    train_label: str = "") -> str | None:
    """Energy above the ground state against atoms per primitive cell, space group
    and free variables (paper Fig. 5), or histograms of them without energies."""
    import matplotlib.pyplot as plt

    xs = [c for c in (S.NATOMS, S.SPG, S.DOF) if c in gen.columns]
    if gen.empty or not xs:
        return None
    with_e = "e_above" in gen.columns and gen["e_above"].notna().any()
    fig, axes = plt.subplots(1, len(xs), figsize=(4 * len(xs), 3.2), squeeze=False)
    names = {S.NATOMS: "atoms in the primitive cell", S.SPG: "space group",
             S.DOF: "free variables"}
    for ax, x in zip(axes[0], xs):
        if with_e:
            if "e_above" in train.columns and x in train.columns:
                ax.scatter(train[x], train["e_above"], s=10, marker="s", color="#999999",
                           label=f"training ({train_label})")
            ax.scatter(gen[x], gen["e_above"], s=8, alpha=0.6, color="#cc3311",
                       label=f"generated, unique ({model})")
            ax.set_ylabel("E - E_ground (graphite), eV/atom")
            ax.legend(fontsize=7)
        else:
            if x in train.columns:
                ax.hist(train[x], bins=30, alpha=0.5, color="#999999", label="training")
            ax.hist(gen[x], bins=30, alpha=0.6, color="#cc3311", label="generated (unique)")
            ax.set_ylabel("structures")
            ax.legend(fontsize=7)
        ax.set_xlabel(names[x])
    fig.suptitle("Complexity of the unique generated crystals (cf. Fig. 5)")
    fig.tight_layout()
    return _png(fig)


def render(run: Run, metrics: dict[str, Any], images: dict[str, str],
           found: str = "") -> str:
    """The HTML page; ``found``: the candidates' section (``candidates``)."""
    table = M.table_iv(metrics, run.path.name).splitlines()
    head = [c.strip() for c in table[0].strip("|").split("|")]
    row = [c.strip() for c in table[2].strip("|").split("|")]
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    vals = "".join(f"<td>{html.escape(v)}</td>" for v in row)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in metrics.get("notes", []))
    done = "".join(f"<li>{html.escape(n)}</li>"
                   for n in C.processed_lines(metrics.get("processed", {})))
    overlap = ""
    if metrics.get("overlap"):
        overlap = ("<h2>Shared unique crystals (Table III)</h2>"
                   + pd.DataFrame(metrics["overlap"]).to_html())
    figs = "".join(f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" '
                   f'src="data:image/png;base64,{png}">' for title, png in images.items())
    status = run.status().to_html(index=False)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>legodask report: {html.escape(run.path.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px}}</style>
</head><body>
<h1>legodask run {html.escape(str(run.path))}</h1>
<h2>Metrics (Table IV row, low energy: within {metrics.get("window")} eV/atom)</h2>
<table><tr>{cells}</tr><tr>{vals}</tr></table>
<ul>{notes}</ul>
<h2>Rows each stage worked on</h2><ul>{done}</ul>
{C.novelty_html(metrics.get("novelty") or {})}
{found}
{overlap}
{figs}
<h2>Tables</h2>{status}
</body></html>
"""


def write_report(run: Run, window: float = M.WINDOW, model: str | None = None) -> dict[str, Any]:
    """Write the run's report page; return the metrics it shows."""
    import matplotlib

    matplotlib.use("Agg")
    metrics = load_metrics(run, window)
    model = model or (metrics.get("models") or [None])[-1]
    tables = set(run.tables())
    if S.INGESTED in tables and S.FINGERPRINTS in tables:
        M.train_fingerprints(run)
        tables = set(run.tables())
    con = connect(run)
    gen, (train, label) = generated(con, tables, model), training(con, tables, model)
    images = {"Counts": plot_funnel(metrics, model)}
    for title, png in (("Energy distribution",
                        plot_energy(gen, train, model, label) if model else None),
                       ("Complexity", plot_complexity(gen, train, model, label))):
        if png:
            images[title] = png
    found = C.candidates_html(C.lowest_new(con, tables, model), model) if model else ""
    run.file(store.REPORT).write_text(render(run, metrics, images, found))
    return metrics
