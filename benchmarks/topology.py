"""Topology benchmark: dimensionality + topology key per core-second, and the
agreement with CrystalNets on the 150 SACADA sp2 structures as the baseline.

    OMP_NUM_THREADS=1 LEGODASK_SACADA_DB=/path/to/sp2_sacada.db python benchmarks/topology.py

1. Rate: ``crystal.topology.atoms_topology`` on ``--n`` generated-like structures
   (the SACADA structures of at most 100 atoms and the doubled cells of those of at
   most 50, each strained by a random symmetric strain of 2 % and every atom
   displaced by a 0.03 Å Gaussian), with no symmetry given: every vertex is
   searched, the worst case of a generated structure.  CPU time of this process.
   Also the share that keeps the key of the structure it was made from.
2. Baseline: on the 150 rows (``row.toatoms()``), dimension against the db's
   ``dimension``, the partition of our keys against CrystalNets' genomes
   (``topology_detail``, or the RCSR name where the db stores the name instead),
   our key of the atoms against our key of CrystalNets' genome graph, and names.
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

from legodask.crystal.quotient import from_genome  # noqa: E402
from legodask.crystal.topology import NETS, atoms_topology, genome_topology  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DB = Path(os.environ.get("LEGODASK_SACADA_DB", ROOT.parent / "shared/data/sp2_sacada.db"))


def generated_like(pool: list, n: int, rng: np.random.Generator) -> list:
    """``n`` strained and rattled copies of structures drawn from ``pool``."""
    out = []
    for k in rng.integers(len(pool), size=n):
        atoms = pool[k].copy()
        eps = rng.normal(scale=0.02, size=(3, 3))
        atoms.set_cell(atoms.cell @ (np.eye(3) + (eps + eps.T) / 2), scale_atoms=True)
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        out.append((int(k), atoms))
    return out


def rate(rows: list, n: int, seed: int) -> dict:
    pool = [r.toatoms() for r in rows if r.natoms <= 100]
    pool += [r.toatoms() * (2, 1, 1) for r in rows if r.natoms <= 50]
    parents = [atoms_topology(a).key for a in pool]
    structures = generated_like(pool, n, np.random.default_rng(seed))
    t0 = time.process_time()
    keys = [atoms_topology(atoms).key for _, atoms in structures]
    cpu = time.process_time() - t0
    kept = sum(key == parents[k] for key, (k, _) in zip(keys, structures))
    natoms = [len(a) for _, a in structures]
    return {"structures": n, "cpu_s": round(cpu, 2), "per_core_second": round(n / cpu, 1),
            "mean_atoms": round(float(np.mean(natoms)), 1), "max_atoms": max(natoms),
            "pool": len(pool), "kept_parent_key": round(kept / n, 4)}


def baseline(rows: list) -> dict:
    ours = [atoms_topology(r.toatoms()) for r in rows]
    theirs = [r.topology if r.topology_detail == "None" else r.topology_detail for r in rows]
    keys = [t.key for t in ours]
    pairs = set(zip(keys, theirs))
    genome_rows = [(r, t) for r, t in zip(rows, ours) if r.topology_detail != "None"]
    same_key = [r.id for r, t in genome_rows if genome_topology(r.topology_detail).key == t.key]
    other_bonds = [r.id for r, _ in genome_rows
                   if not np.all(from_genome(r.topology_detail)[0].degree == 3)]
    named = [(r.topology, t.name) for r, t in zip(rows, ours) if r.topology in NETS]
    return {"rows": len(rows),
            "dimension_agrees": sum(t.dimension == r.dimension for r, t in zip(rows, ours)),
            "crystalnets_classes": len(set(theirs)), "our_classes": len(set(keys)),
            "partition_equal": len(pairs) == len(set(keys)) == len(set(theirs)),
            "genome_rows": len(genome_rows), "genome_key_equal": len(same_key),
            "genome_key_differs": sorted({r.id for r, _ in genome_rows} - set(same_key)),
            "crystalnets_bonded_otherwise": other_bonds,
            "named_in_table": len(named), "named_right": sum(a == b for a, b in named),
            "interpenetrated_2fold": [r.id for r, t in zip(rows, ours) if t.fold == 2]}


def markdown(res: dict) -> str:
    r, b = res["rate"], res["baseline"]
    return f"""## topology

```bash
OMP_NUM_THREADS=1 LEGODASK_SACADA_DB=/path/to/sp2_sacada.db python benchmarks/topology.py
```

Machine: {res["machine"]} (shared with other work; the benchmark runs one process, one thread).

**Rate**: {r['per_core_second']} structures per core-second ({r['structures']:,}
generated-like structures, mean {r['mean_atoms']} atoms, at most {r['max_atoms']}: the
SACADA structures of at most 100 atoms and doubled cells of those of at most 50,
strained 2 % and rattled 0.03 Å, no symmetry given so every vertex is searched;
{r['cpu_s']} CPU s).  {100 * r['kept_parent_key']:.1f} % keep the key of the structure
they were made from (the others gained or lost a bond at the 1.872 Å cutoff).

**Baseline, CrystalNets on the {b['rows']} SACADA rows** (``row.toatoms()``, every
atom 3-bonded there): dimension agrees on {b['dimension_agrees']}/{b['rows']}; our keys
make {b['our_classes']} classes, CrystalNets' genomes (or RCSR names where the db
stores the name) {b['crystalnets_classes']}, and the partitions are
{'equal' if b['partition_equal'] else 'NOT equal'}.  Our key of the atoms equals our key
of CrystalNets' genome graph on {b['genome_key_equal']}/{b['genome_rows']} rows; rows
{b['genome_key_differs']} differ because CrystalNets bonded longer contacts there
(its genome has 4- and 5-connected vertices).  Rows {b['interpenetrated_2fold']} are
2-fold interpenetrated ("(2)" genomes; fold 2 here).  Names:
{b['named_right']}/{b['named_in_table']} of the rows whose RCSR net is in ``NETS``.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from ase.db import connect

    rows = list(connect(DB).select())
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                      f"{platform.python_implementation()} {platform.python_version()}",
           "rate": rate(rows, args.n, args.seed), "baseline": baseline(rows)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "topology.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / "topology.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
