"""Why sampled rows are invalid: the reasons, and how they move with the way rows are drawn.

For each trained model of a run, draws rows with one seed and decodes them; reports
the share valid by our criterion, without its distance check, and by pyxtal's own
decoder (``from_tabular_representation``, which drops a site off its Wyckoff
position and still calls the crystal valid: the paper's criterion), the reasons
of the invalid rows in classes (atoms of one general-position orbit too close -- a
site near a symmetry element --, atoms of two sites too close, a site off its
Wyckoff position, a Wyckoff index the group does not have, other) and the share
valid when the same model draws differently: a VAE without the learnt sigma noise,
from its prior at temperature 0.5, from the aggregate posterior of the training
rows; a GAN with its categories by the argmax of the logits instead of Gumbel
samples.  Nothing here changes the criterion.  A model's encoder says how it wrote
sites (``legodask encode --sites``): as given, or in their Wyckoff generator's form.

    python benchmarks/validity.py --run RUN --models vae-cont,gan40 [--n 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from ase.geometry import cellpar_to_cell

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import pyxtal_decode  # noqa: E402  (pyxtal's from_tabular_representation)

from legodask import models
from legodask.crystal.decode import decode_row, only_overlapping
from legodask.crystal.frame import decode_frame
from legodask import schema as S
from legodask.crystal.convert import symmetry_key
from legodask.store import Run

OUT = Path(__file__).parent / "results"


def overlap_kind(row: dict) -> str:
    """Whether the closest pair of a row's atoms is of one site's orbit or of two sites."""
    from scipy.spatial import cKDTree

    dec = decode_row(row, check_distances=False)
    frac, _ = dec.positions()
    site = np.repeat(np.arange(len(dec.sites)), [s.wp.multiplicity for s in dec.sites])
    cell = cellpar_to_cell(dec.cell)
    shifts = np.array(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij")).reshape(3, -1).T
    images = (frac[None] + shifts[:, None]).reshape(-1, 3) @ cell
    dist, idx = cKDTree(images).query(frac @ cell, k=2)
    i = int(np.argmin(dist[:, 1]))
    j = int(idx[i, 1]) % len(frac)
    if site[i] != site[j]:
        return "two sites too close"
    return f"one orbit too close (site dof {dec.sites[site[i]].wp.dof})"


def reasons(out: pd.DataFrame) -> dict[str, float]:
    """Shares of all rows by reason class (overlaps by their closest pair)."""
    err = out["error"].fillna("")
    kinds = pd.Series("valid", index=out.index)
    kinds[err.str.contains("from Wyckoff position")] = "site off its Wyckoff position"
    kinds[err.str.contains("Wyckoff index")] = "Wyckoff index not in the group"
    kinds[~out["valid_xtal"] & (kinds == "valid")] = "other"
    overlap = err.str.startswith("two atoms")
    for rec, i in zip(out[overlap].to_dict("records"), out.index[overlap]):
        kinds[i] = overlap_kind(rec)
    return kinds.value_counts(normalize=True).round(4).to_dict()


def scored(enc, x: np.ndarray, train_syms: set) -> tuple[pd.DataFrame, dict[str, float]]:
    df = enc.inverse_transform(x)
    df["id"] = [f"s{i}" for i in range(len(df))]
    out = decode_frame(df)
    ok = out["valid_xtal"]
    pyx = ok | only_overlapping(out)
    syms = set(symmetry_key(out[ok]).tolist())
    return out, {"valid": round(float(ok.mean()), 4), "valid_pyxtal": round(float(pyx.mean()), 4),
                 "symmetries": len(syms), "new_symmetries": len(syms - train_syms)}


def prerelaxed(out: pd.DataFrame, n: int, max_atoms: int = 48) -> dict[str, list[int]]:
    """``[rows, valid_env]`` of the first ``n`` valid rows and of the first ``n`` rows
    whose atoms overlap (decoded without the distance check), of at most ``max_atoms``
    atoms, pre-relaxed towards graphite (batched path)."""
    from legodask import prerelax

    lax = decode_frame(out.drop(columns=["valid_xtal", "error"]), min_distance=0.0)
    small = lax["natoms"].between(1, max_atoms)
    overlapping = lax["valid_xtal"] & ~out["valid_xtal"] & small
    res = {}
    for label, rows in (("valid", lax[out["valid_xtal"] & small]),
                        ("overlapping", lax[overlapping])):
        rel = prerelax.prerelax_frame(rows.head(n), "graphite", device="torch")
        res[label] = [len(rel), int(rel["valid_env"].sum())]
    return res


def variants(model, enc, n: int, seed: int, train: pd.DataFrame) -> dict[str, np.ndarray]:
    """Feature rows drawn in each way, all from ``seed``."""
    import torch

    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    out = {"as sampled": model.sample(n, gen())}
    with torch.no_grad():
        if model.kind == "vae":
            dim = model.hparams["embedding_dim"]
            sigma = model.dec.sigma[model.scalars]

            def decode(z: torch.Tensor, g: torch.Generator, noise: bool = True) -> np.ndarray:
                x = torch.tanh(model.dec(z))
                if noise:
                    eps = torch.randn(len(z), len(model.scalars), generator=g)
                    x[:, model.scalars] = (x[:, model.scalars] + eps * sigma).clamp(-1, 1)
                return x.numpy()

            g = gen()
            out["no sigma noise"] = decode(torch.randn(n, dim, generator=g), g, noise=False)
            g = gen()
            out["prior at temperature 0.5"] = decode(0.5 * torch.randn(n, dim, generator=g), g)
            mu, logvar = model.enc(torch.from_numpy(enc.transform(train)))
            g = gen()
            i = torch.randint(len(mu), (n,), generator=g)
            z = mu[i] + torch.randn(n, dim, generator=g) * torch.exp(0.5 * logvar[i])
            out["aggregate posterior"] = decode(z, g)
        else:
            g = gen()
            weights = torch.as_tensor(model.cond_counts, dtype=torch.float64)
            cats = torch.multinomial(weights, n, replacement=True, generator=g).numpy()
            raw = model.G(torch.cat([model._noise(n, g), model._onehot(cats)], 1))
            raw[:, model.layout.scalars] = torch.tanh(raw[:, model.layout.scalars])
            out["categories by argmax, not Gumbel"] = raw.numpy()
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--models", required=True, help="comma-separated model names")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="validity", help="results/<name>.json/.md")
    ap.add_argument("--prerelax", type=int, default=0, metavar="N",
                    help="pre-relax N valid and N overlapping rows as sampled")
    args = ap.parse_args()
    torch.set_num_threads(1)
    run = Run(args.run)
    train = run.read("augmented")
    train = S.conform(train.compute() if hasattr(train, "compute") else train)
    train = train[train["valid_xtal"]].reset_index(drop=True)
    train_syms = set(symmetry_key(train).tolist())
    results = {}
    for name in args.models.split(","):
        model, enc = models.load(run.model_dir(name))
        res: dict = {"sites": enc.sites, "drawn": {}}  # "reasons", "prerelaxed": as sampled
        for label, x in variants(model, enc, args.n, args.seed, train).items():
            out, r = scored(enc, x, train_syms)
            res["drawn"][label] = r
            if label == "as sampled":
                res["reasons"] = reasons(out)
                _, r["pyxtal_decoder"], r["pyxtal_lost_a_site"] = pyxtal_decode(out)
                if args.prerelax:
                    res["prerelaxed"] = prerelaxed(out, args.prerelax)
        results[name] = res
    OUT.mkdir(exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    cmd = f"OMP_NUM_THREADS=1 python benchmarks/validity.py {' '.join(sys.argv[1:])}"
    lines = [f"## validity: why sampled rows are invalid ({len(train):,} training rows)", "",
             f"Command: `{cmd}`", "",
             "| model | sites encoded | drawn | valid % | valid % without the distance check "
             "| pyxtal's decoder: 'valid' % (of which lost a site) | symmetries (new) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, res in results.items():
        for label, r in res["drawn"].items():
            pyx = (f"{100 * r['pyxtal_decoder']:.1f} ({100 * r['pyxtal_lost_a_site']:.1f})"
                   if "pyxtal_decoder" in r else "")
            lines.append(f"| {name} | {res['sites']} | {label} | {100 * r['valid']:.1f} | "
                         f"{100 * r['valid_pyxtal']:.1f} | {pyx} | "
                         f"{r['symmetries']} ({r['new_symmetries']}) |")
    lines += ["", "Reasons of the rows as sampled (share of all rows; overlaps classified by "
              "their closest pair):", ""]
    for name, res in results.items():
        shares = ", ".join(f"{k} {100 * v:.1f} %" for k, v in res["reasons"].items())
        lines.append(f"- {name}: {shares}")
    pre = {name: res["prerelaxed"] for name, res in results.items() if "prerelaxed" in res}
    if pre:
        lines += ["", "Pre-relaxed towards graphite (batched; rows of at most 48 atoms, as "
                  "sampled): valid_env of valid rows and of rows whose atoms overlap, which "
                  "pyxtal's decoder (the paper's pipeline) passes on:", ""]
        lines += [f"- {name}: valid {v[1]}/{v[0]}, overlapping {o[1]}/{o[0]}"
                  for name, (v, o) in ((k, (r["valid"], r["overlapping"])) for k, r in pre.items())]
    (OUT / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
