"""Stage-1 benchmark: the learned model over the discrete columns against the
training table's empirical distribution (its baseline), on diversity and validity.

    OMP_NUM_THREADS=1 python benchmarks/stage1.py --run runs/yield --model cvae-cont

From one trained two-stage model, ``--n`` rows are drawn for each share of rows whose
discrete part (space group, Wyckoff set, elements) comes from the learned stage 1
(0: the training combinations only, the baseline).  Per share: distinct
combinations among the rows and those not in the training table; valid crystals
(decoded, atoms may overlap as in the yield benchmark); and, pre-relaxing the first
``--prerelax`` valid rows towards graphite (the batched path), the share that
reaches the environment and the distinct and new combinations among those that do.
The learned proposals the check rejected are listed by reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from legodask import schema as S  # noqa: E402
from legodask import store  # noqa: E402
from legodask.crystal.frame import decode_frame  # noqa: E402
from legodask.models import load  # noqa: E402
from legodask.prerelax.frame import prerelax_frame  # noqa: E402

RESULTS = ROOT / "benchmarks/results"


def combos(df: pd.DataFrame) -> set[tuple]:
    """The discrete combinations (space group, Wyckoff indices, elements) of rows."""
    cols = [S.SPG, *S.WP, *S.EL]
    return set(df[cols].astype(str).itertuples(index=False, name=None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/yield")
    ap.add_argument("--model", default="cvae-cont")
    ap.add_argument("--n", type=int, default=2000, help="rows drawn per share")
    ap.add_argument("--shares", default="0,0.25,0.5,1")
    ap.add_argument("--prerelax", type=int, default=150, help="valid rows pre-relaxed per share")
    args = ap.parse_args()
    run = store.Run(args.run)
    model, encoder = load(run.path / store.MODELS / args.model)
    training = model.catalogue
    seen = combos(encoder.inverse_transform(
        model.features(torch.zeros(len(training.codes), len(model.cont_idx)),
                       model.one_hot(training.codes)).numpy()))
    lines, res = [], {}
    for share in (float(s) for s in args.shares.split(",")):
        model.stage1.share = share
        t = time.perf_counter()
        x = model.sample_in(args.n, torch.Generator().manual_seed(0), None)
        df = decode_frame(encoder.inverse_transform(x), min_distance=0.0)
        sample_s = time.perf_counter() - t
        df[S.ID] = [f"s{share}-{i}" for i in range(len(df))]
        valid = df[df[S.VALID_XTAL]]
        t = time.perf_counter()
        pre = prerelax_frame(valid.head(args.prerelax).reset_index(drop=True), device="torch")
        env = pre[pre[S.VALID_ENV].fillna(False).astype(bool)]
        got = combos(df)
        res[share] = {
            "rows": len(df), "combinations": len(got), "new_combinations": len(got - seen),
            "valid_xtal": len(valid), "sample_s": round(sample_s, 2),
            "prerelaxed": len(pre), "valid_env": len(env),
            "env_combinations": len(combos(env)), "env_new_combinations": len(combos(env) - seen),
            "prerelax_s": round(time.perf_counter() - t, 1)}
        print(share, res[share], flush=True)
    report = model.stage1.report()
    out = {"n": args.n, "training_combinations": len(seen), "shares": res,
           "proposals": {k: v for k, v in report.items() if k != "rejected"},
           "rejected": report["rejected"],
           "command": "OMP_NUM_THREADS=1 python benchmarks/stage1.py " + " ".join(sys.argv[1:])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "stage1.json").write_text(json.dumps(out, indent=1))
    (RESULTS / "stage1.md").write_text(markdown(out))
    print(markdown(out))


def markdown(out: dict) -> str:
    n = out["n"]
    lines = [f"## stage 1: learned proposals against the training combinations ({n} rows "
             "per share)", "", f"Command: `{out['command']}`", "",
             f"The training table holds {out['training_combinations']} combinations.", "",
             "| learned share | combinations | new | valid crystals | pre-relaxed | valid env "
             "| combinations in env | new in env |", "|" + "---|" * 8]
    for share, r in out["shares"].items():
        lines.append(f"| {share} | {r['combinations']} | {r['new_combinations']} | "
                     f"{r['valid_xtal'] / r['rows']:.1%} | {r['prerelaxed']} | "
                     f"{r['valid_env'] / max(r['prerelaxed'], 1):.1%} | "
                     f"{r['env_combinations']} | {r['env_new_combinations']} |")
    p = out["proposals"]
    lines += ["", f"Of {p['proposals']} proposals of the learned stage 1, {p['valid']} are "
              f"valid combinations ({p['combinations']} distinct, {p['new_combinations']} "
              "not in the training table); the others by reason: " + ", ".join(
                  f"{k} {v}" for k, v in out["rejected"].items()) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
