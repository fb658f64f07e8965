"""Conditional sampling benchmark: rows of a crystal system drawn directly by the
two-stage model (cvae) against rejection sampling from the VAE, and stage 1's
diversity against the training table's distribution.

    OMP_NUM_THREADS=1 LEGODASK_SACADA_DB=/path/to/sp2_sacada.db python benchmarks/conditional.py

Both models learn the 150 SACADA sp2 structures (ingested and symmetrised, sites in
their generator's form, no augmentation), with the same networks and epochs.  For
each model: ``--n`` rows drawn unconditioned and ``--n`` rows asked to be cubic
(``legodask sample --crystal-system cubic``); seconds of drawing (features to table
rows) per 1,000 rows, the share of cubic rows, and the share that decodes as valid
crystals (``decode_frame``, atoms at least 0.6 Å apart).  The VAE's cubic rows are
rows drawn again until enough are cubic (at most 100 rounds).  Stage 1: distinct
(space group, Wyckoff set) combinations and entropy of ``--n`` draws at temperatures
1 (the training table's distribution, the baseline), 2 and 4, and the share of the
cvae's rows that decode as valid at each.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from legodask import models  # noqa: E402
from legodask import schema as S  # noqa: E402
from legodask.crystal.frame import decode_frame  # noqa: E402
from legodask.models import encoding as E  # noqa: E402
from legodask.models.base import ChunkStream  # noqa: E402
from legodask.models.classes import Classes, crystal_system  # noqa: E402
from legodask.models.sampling import draw  # noqa: E402
from legodask.models.training import fit  # noqa: E402
from legodask.sources.ingest import read_items  # noqa: E402
from legodask.sources.readers import list_items  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DB = Path(os.environ.get("LEGODASK_SACADA_DB", ROOT.parent / "shared/data/sp2_sacada.db"))
COMMAND = ("OMP_NUM_THREADS=1 LEGODASK_SACADA_DB=/path/to/sp2_sacada.db "
           "python benchmarks/conditional.py")


def measure(model: models.base.TabularModel, enc: E.Encoder, n: int, seed: int,
            classes: Classes | None) -> dict[str, float]:
    """Seconds per 1,000 rows drawn, rows got, shares cubic and valid."""
    g = torch.Generator().manual_seed(seed)
    t = time.process_time()
    df = draw(model, enc, n, g, classes)
    seconds = time.process_time() - t
    out = decode_frame(df)
    return {"rows": len(df), "seconds_per_1000": 1000 * seconds / max(len(df), 1),
            "cubic": float((crystal_system(df[S.SPG]) == "cubic").mean()),
            "valid": float(out[S.VALID_XTAL].mean())}


def diversity(model: models.base.TabularModel, enc: E.Encoder, n: int, seed: int,
              temperature: float) -> dict[str, float]:
    """Stage 1 at ``temperature``: distinct combinations and entropy of ``n`` draws,
    and the share of whole rows then decoded as valid."""
    cat = model.catalogue
    codes = cat.sample(n, torch.Generator().manual_seed(seed), temperature=temperature)
    _, counts = np.unique(codes, axis=0, return_counts=True)
    p = counts / counts.sum()
    model.catalogue.temperature = temperature
    try:
        valid = measure(model, enc, n, seed, None)["valid"]
    finally:
        model.catalogue.temperature = 1.0
    return {"temperature": temperature, "distinct": int(len(counts)),
            "entropy": float(-(p * np.log(p)).sum()), "valid": valid}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    table = read_items(list_items(DB), 1e-3, "sacada")
    table = table[table[S.VALID_XTAL]].reset_index(drop=True)
    enc = E.fit(table, "cont")
    x = enc.transform(table)
    hp = {"compress_dims": (256, 256), "decompress_dims": (256, 256), "batch_size": 500}
    res: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, CPython "
                            f"{platform.python_version()}",
                 "rows": len(table), "epochs": args.epochs, "n": args.n,
                 "training_cubic": float((crystal_system(table[S.SPG]) == "cubic").mean()),
                 "hparams": {k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()}}
    for kind in ("cvae", "vae"):
        model = models.build(kind, enc, torch.device("cpu"), seed=args.seed, **hp)
        t = time.process_time()
        out = Path(os.environ.get("TMPDIR", "/tmp")) / f"legodask-conditional-{kind}"
        fit(model, enc, ChunkStream(x), args.epochs, out, resume=False, seed=args.seed)
        res[kind] = {"train_seconds": time.process_time() - t,
                     "any": measure(model, enc, args.n, args.seed, None),
                     "cubic": measure(model, enc, args.n, args.seed + 1,
                                      Classes.of(systems=["cubic"]))}
        if kind == "cvae":
            res["stage1"] = [diversity(model, enc, args.n, args.seed, t) for t in (1.0, 2.0, 4.0)]
    for kind in ("cvae", "vae"):
        r = res[kind]
        r["cost_ratio"] = r["cubic"]["seconds_per_1000"] / r["any"]["seconds_per_1000"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "conditional.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / "conditional.md").write_text(markdown(res))
    print(markdown(res))


def markdown(r: dict) -> str:
    rows = []
    for kind in ("cvae", "vae"):
        for what in ("any", "cubic"):
            m = r[kind][what]
            rows.append(f"| {kind} | {what} | {m['rows']:,} | {m['seconds_per_1000']:.3f} | "
                        f"{100 * m['cubic']:.1f} % | {100 * m['valid']:.1f} % |")
    s1 = [f"| {d['temperature']:g} | {d['distinct']} | {d['entropy']:.2f} | "
          f"{100 * d['valid']:.1f} % |" for d in r["stage1"]]
    return "\n".join([
        "# conditional", "", "```bash", COMMAND, "```", "",
        f"Machine: {r['machine']} (shared with other work; one process, one thread).", "",
        f"Training: the {r['rows']} valid SACADA sp2 rows ({100 * r['training_cubic']:.1f} % "
        f"cubic), sites in their generator's form; both models {r['epochs']} epochs, hidden "
        f"layers {r['hparams']['compress_dims']}.  {r['n']:,} rows asked for per line; "
        "seconds of CPU per 1,000 rows drawn (features to table rows, not decoding); valid: "
        "decoded with atoms at least 0.6 Å apart.", "",
        "| model | asked | rows got | s / 1,000 rows | cubic | valid |", "|---|---|---|---|---|---|",
        *rows, "",
        f"**Cubic without rejection**: the cvae gives {100 * r['cvae']['cubic']['cubic']:.1f} % "
        f"cubic rows at {r['cvae']['cost_ratio']:.2f}x the cost of unconditioned rows; the "
        f"VAE's rejection sampling costs {r['vae']['cost_ratio']:.1f}x per cubic row "
        f"({r['vae']['cubic']['rows']:,} of {r['n']:,} found).", "",
        "**Stage 1 diversity** (temperature 1: the training table's distribution, the "
        "baseline; every combination drawn is valid by construction):", "",
        "| temperature | distinct combinations | entropy (nats) | rows valid |",
        "|---|---|---|---|", *s1, ""])


if __name__ == "__main__":
    main()
