"""Device checks on a GPU machine, in one short run: the batched pre-relaxation's
structures per minute (issue 4: >= 1,000 per minute), sampling rows per second
against ``ctgan``'s ``sample`` on the same GPU (issue 5: >= 10x), and the rank
stage's batched relaxer (CHGNet) in structures per minute against CHGNet one
structure at a time on one CPU core (issue 18: >= 10x), and a round of the
optimize stage (latent + direct optimisation through the two-stage model) over
pre-relaxed rows that missed the environment (issue 17: >= 1,000 rows per minute).

The device machine has PyTorch but not pyxtal, ase, dask or ctgan, and no data, so
the inputs are made here and travel, with the wheels, in two git-ignored folders:

    python benchmarks/gpu.py prepare --run RUN   # here: .gpu/ (rows, models), needs
                                                 # RUN/models/{vae,gan,cvae}-cont trained
                                                 # and RUN's prerelaxed_cvae table
                                                 # (benchmarks/yield.py makes both)
    python benchmarks/gpu.py wheels              # here: .whl/ (pip download, py3.12)
    bash benchmarks/gpu.sh                       # there, from the repo root with .gpu/
                                                 # and .whl/ copied beside it
    python benchmarks/gpu.py report DIR          # here: DIR/gpu.json -> results/gpu.md

``python benchmarks/gpu.py run --device cpu --quick`` runs the device part here
(small sizes), which is how it is tested without a GPU.  Each step writes its
result to ``$OUT/gpu.json`` as soon as it ends and has a time cap, so a run cut
short still reports the steps it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
INPUTS = ROOT / ".gpu"
WHEELS = ROOT / ".whl"
MODELS = ("vae-cont", "gan-cont")
TWO_STAGE = "cvae-cont"  # the optimize check's model, and its rows' table:
MISSED_TABLE = "prerelaxed_cvae"
N_GENERATED = 3072       # generated-like rows relaxed on the GPU
BATCH = 1024
N_SAMPLE = 1_000_000
N_CTGAN_FIT = 2000       # rows ctgan fits its transformer and one epoch on
# wheels the device image lacks (versions as in the project's venv); ctgan's own
# (it pins pandas < 3) go to a separate folder for its subprocess
LEGODASK_WHEELS = ("pyxtal==1.1.5 pymatgen==2026.10.24 pymatgen-core==2026.10.16 spglib==2.8.0 "
                   "ase==3.29.0 monty==2026.10.21 ruamel.yaml==0.19.1 orjson==3.13.0 "
                   "importlib_metadata==10.2.0 lazy-importer==0.1.0 wcwidth==0.9.4 "
                   "pyocse==0.1.6 vasprun-xml==1.0.4 pandas==3.1.1 dask==2026.8.0 "
                   "distributed==2026.8.0 tblib==3.2.2 zict==3.0.0 locket==1.0.0 "
                   "partd==1.4.2 tornado==6.6.1 chgnet==0.4.2 torch-sim-atomistic==0.3.0 "
                   "vesin==0.6.2 vesin-torch==0.6.2 tables==3.11.1 numexpr==2.14.2 "
                   "blosc2==4.14.1 ndindex==1.10.1 py-cpuinfo==9.0.0")
CTGAN_WHEELS = ("ctgan==0.12.1 rdt==2.0.0 Faker==40.63.0 pandas==2.3.3 pytz==2026.6 "
                "tzdata==2026.6")
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]

CTGAN_SCRIPT = r'''
import json, sys, time
import pandas as pd, torch
from ctgan import CTGAN, TVAE
src, n = sys.argv[1], int(sys.argv[2])
df = pd.read_parquet(src)
discrete = ["spg"] + [f"wp{k}" for k in range(8)]
res = {}
for name, cls, kw in [("ctgan-vae", TVAE, dict(compress_dims=(512, 512), decompress_dims=(512, 512))),
                      ("ctgan-gan", CTGAN, dict(generator_dim=(512, 512), discriminator_dim=(256, 256), pac=10))]:
    model = cls(epochs=1, batch_size=500, cuda=torch.cuda.is_available(), **kw)
    model.fit(df, discrete)
    model.sample(1000)
    t = time.perf_counter(); model.sample(n); s = time.perf_counter() - t
    res[name] = {"rows": n, "seconds": s, "rows_per_s": n / s}
    print(name, res[name], flush=True)
print("RESULT " + json.dumps(res))
'''


# ---------------------------------------------------------------------------
# here: inputs and wheels
# ---------------------------------------------------------------------------

def prepare(run: Path, seed: int = 0) -> None:
    """Rows to relax (perturbed training and generated-like), the trained models and
    ctgan's training rows, into ``.gpu/`` (derived from the data: never committed)."""
    sys.path.insert(0, str(HERE))
    import prerelax as B  # the pre-relaxation benchmark's structures
    import torch
    from generate import reference_layout  # what ctgan is given

    from legodask import schema as S
    from legodask.store import Run

    train = B.training_rows()
    rows = {"perturbed": B.perturbed(train, seed), "generated": B.generated_like(
        train, N_GENERATED, seed + 1)}
    INPUTS.mkdir(exist_ok=True)
    with open(INPUTS / "prerelax.pkl", "wb") as f:
        pickle.dump(rows, f)
    with open(INPUTS / "rank.pkl", "wb") as f:          # the rank benchmark's structures
        pickle.dump(training_structures(), f)
    for name in MODELS:
        src, dst = Run(run).model_dir(name), INPUTS / "run/models" / name
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / "config.json", dst / "config.json")
        state = torch.load(src / "best.pt", map_location="cpu", weights_only=True)
        state["model"].pop("D", None)  # sampling needs the generator alone
        torch.save(state, dst / "best.pt")
    shutil.copytree(Run(run).model_dir(TWO_STAGE), INPUTS / "run/models" / TWO_STAGE,
                    dirs_exist_ok=True)
    pre = Run(run).read(MISSED_TABLE).compute()
    missed = pre[pre[S.LOSS].notna() & ~pre[S.VALID_ENV].fillna(False).astype(bool)]
    with open(INPUTS / "optimize.pkl", "wb") as f:
        pickle.dump(missed.reset_index(drop=True), f)
    aug = Run(run).read("augmented", columns=S.TABULAR).compute()
    table = aug.sample(n=min(N_CTGAN_FIT, len(aug)), random_state=seed)
    reference_layout(table.reset_index(drop=True)).to_parquet(INPUTS / "ctgan_rows.parquet")
    print(f"wrote {INPUTS}: {len(rows['perturbed'])} perturbed, {len(rows['generated'])} "
          f"generated-like rows, models {MODELS}, {len(table)} ctgan rows")


def wheels() -> None:
    """The wheels the device image lacks, for Python 3.12 on x86-64."""
    for folder, specs in ((WHEELS, LEGODASK_WHEELS), (WHEELS / "ctgan", CTGAN_WHEELS)):
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
               "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
               *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(folder),
               *specs.split()]
        subprocess.run(cmd, check=True)
    size = sum(p.stat().st_size for p in WHEELS.rglob("*.whl")) / 2**20
    print(f"wrote {WHEELS}: {size:.0f} MiB")


# ---------------------------------------------------------------------------
# there: the checks
# ---------------------------------------------------------------------------

class Results:
    """``gpu.json`` under ``out``, rewritten after every step."""

    def __init__(self, out: Path):
        self.path = out / "gpu.json"
        self.data: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=1, default=float))
        print(key, json.dumps(value, default=float), flush=True)


def step(res: Results, key: str, fn: Any, *args: Any) -> None:
    """Run one check; a failure is recorded and the next check runs."""
    t0 = time.perf_counter()
    try:
        value = fn(*args)
    except Exception as exc:  # report and go on: one broken check must not cost the rest
        value = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
    value["wall_s"] = time.perf_counter() - t0
    res.put(key, value)


def relax_check(rows: list[dict], device: str, batch: int, cap_s: float) -> dict:
    """Batched pre-relaxation (with the rescue) on ``device``, batches of ``batch``
    rows sorted by size, until ``cap_s`` seconds: structures per minute (wall)."""
    import torch

    from legodask.crystal.environment import get_environment
    from legodask.prerelax import Options
    from legodask.prerelax.problem import build_problem
    from legodask.prerelax.rescue import relax_rows

    env = get_environment("graphite")
    problems = [build_problem(r) for r in rows]
    order = sorted(range(len(rows)), key=lambda k: problems[k].natoms)
    warm = order[:min(32, len(order))]
    relax_rows([rows[k] for k in warm], [problems[k] for k in warm], env, Options(), mode=device)
    done, valid, wall, cpu = 0, 0, 0.0, 0.0
    for i in range(0, len(order), batch):
        chunk = order[i:i + batch]
        if device == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        out = relax_rows([rows[k] for k in chunk], [problems[k] for k in chunk], env,
                         Options(), mode=device)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        done += len(chunk)
        valid += sum(o.valid for o in out)
        if wall > cap_s:
            break
    return {"device": device, "batch": batch, "structures": done, "valid_env": valid,
            "wall_s_relax": wall, "cpu_s": cpu, "per_minute": 60 * done / wall,
            "threads": torch.get_num_threads()}


def training_structures() -> list:
    """The 140 training structures of sp2_sacada.db (ASE Atoms), as the rank
    benchmark relaxes them."""
    from ase.db import connect

    from legodask.sources.sacada import sacada_db

    excluded = {1, 32, 47, 48, 49, 50, 51, 52, 130, 144}
    return [r.toatoms() for r in connect(sacada_db(fetch=False)).select()
            if r.id not in excluded]


def rank_check(structures: list, device: str, relaxer: str, cap_s: float) -> dict:
    """CHGNet (bundled weights) relaxing training structures with ``relaxer`` on
    ``device`` (``batched``: the in-flight batched relaxer; ``ase``: one at a time),
    chunks of 16 until ``cap_s`` seconds: structures per minute (wall)."""
    from legodask import energy as E
    from legodask.energy.relax import RelaxSettings
    from legodask.energy.runner import relax_many

    model = E.get_model("chgnet", device=device)
    settings = RelaxSettings(relaxer="fast" if relaxer == "batched" else "ase")
    done, converged, wall, energies = 0, 0, 0.0, []
    for i in range(0, len(structures), 16):
        t0 = time.perf_counter()
        out = relax_many(model, structures[i:i + 16], settings)
        wall += time.perf_counter() - t0
        done += len(out)
        converged += sum(r.converged for r in out)
        energies += [r.energy for r in out]
        if wall > cap_s:
            break
    return {"device": device, "relaxer": relaxer, "structures": done, "converged": converged,
            "wall_s_relax": wall, "per_minute": 60 * done / wall, "energies": energies}


def optimize_check(rows: Any, model_dir: Path, cap_s: float) -> dict:
    """One round of the optimize stage's kernel (latent steps through the CVAE, then
    the batched direct optimisation; on the GPU when there is one) over pre-relaxed
    rows that missed the environment, chunks of 1,024 rows until ``cap_s`` seconds:
    rows per minute per round, and how many reached the environment."""
    from legodask.models.optimize import optimize_frame
    from legodask.stages.optimize import ROUND_OPTIONS

    def one_round(part: Any) -> Any:
        return optimize_frame(part, str(model_dir), rounds=1, device="torch",
                              options=ROUND_OPTIONS)

    one_round(rows.iloc[:16])   # warm-up
    done, reached, wall = 0, 0, 0.0
    for i in range(0, len(rows), 1024):
        t0 = time.perf_counter()
        out = one_round(rows.iloc[i:i + 1024])
        wall += time.perf_counter() - t0
        done += len(out)
        reached += int(out["valid_env"].fillna(False).astype(bool).sum())
        if wall > cap_s:
            break
    return {"rows": done, "reached": reached, "wall_s_round": wall,
            "per_minute": 60 * done / wall}


def sample_check(run: Path, name: str, n: int, workers: int) -> dict:
    """``legodask sample`` of ``n`` rows on a LocalCluster of ``workers`` processes
    (the model on the GPU when there is one, decoding on each worker's core), and the
    model alone (with the encoder's inverse transform) in this process."""
    import torch

    from legodask import models
    from legodask.cluster import connect
    from legodask.models.sampling import draw
    from legodask.stages.sample import sample_stage
    from legodask.store import Run

    model, encoder = models.load(run / "models" / name)
    draw(model, encoder, 1000, torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    for k in range(0, n, 100_000):
        draw(model, encoder, min(100_000, n - k), torch.Generator().manual_seed(k))
    alone = time.perf_counter() - t0
    table = f"samples_{name.replace('-', '_')}"
    shutil.rmtree(Run(run).table_path(table), ignore_errors=True)
    with connect(None, workers, 1, quiet=True):
        t0 = time.perf_counter()
        result = sample_stage(Run(run), name, n, seed=0, rows_per_part=n // (4 * workers),
                              table=table)
        stage = time.perf_counter() - t0
    valid = Run(run).read(table, columns=["valid_xtal"])["valid_xtal"].mean().compute()
    shutil.rmtree(Run(run).table_path(table), ignore_errors=True)
    return {"model": name, "device": str(model.device), "rows": n,
            "model_rows_per_s": n / alone, "stage_rows_per_s": n / stage,
            "stage_s": stage, "workers": workers, "valid_xtal": float(valid),
            "parts": result.written}


def ctgan_check(rows: Path, n: int, ctgan_path: str | None) -> dict:
    """ctgan's TVAE and CTGAN fitted for one epoch, then ``sample(n)`` timed, in a
    subprocess with ctgan's own pandas first on the path."""
    env = dict(os.environ)
    if ctgan_path:
        env["PYTHONPATH"] = os.pathsep.join([ctgan_path, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", CTGAN_SCRIPT, str(rows), str(n)],
                          capture_output=True, text=True, env=env, timeout=300)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"ctgan failed (rc {proc.returncode}): {proc.stderr[-800:]}")
    return json.loads(line[len("RESULT "):])


def run_checks(out: Path, device: str, quick: bool, ctgan_path: str | None) -> None:
    import torch

    res = Results(out)
    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                            "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    res.put("machine", info)
    with open(INPUTS / "prerelax.pkl", "rb") as f:
        rows = pickle.load(f)
    gen = rows["generated"][:96 if quick else None]
    torch.set_num_threads(1)
    step(res, "prerelax_cpu_1thread", relax_check, gen[:32 if quick else 48], "cpu", 48, 45.0)
    step(res, "prerelax_" + device, relax_check, gen, device, 48 if quick else BATCH,
         30.0 if quick else 120.0)
    step(res, "bias_check_" + device, relax_check, rows["perturbed"][:24 if quick else None],
         device, 256, 60.0)
    workers = 2 if quick else min(15, os.cpu_count() or 1)
    n = 20_000 if quick else N_SAMPLE
    for name in MODELS:
        step(res, f"sample_{name}", sample_check, INPUTS / "run", name, n, workers)
    step(res, "ctgan", ctgan_check, INPUTS / "ctgan_rows.parquet", n, ctgan_path)
    with open(INPUTS / "rank.pkl", "rb") as f:
        structures = pickle.load(f)[:32 if quick else None]
    step(res, "rank_chgnet_cpu_ase", rank_check, structures, "cpu", "ase", 60.0)
    step(res, "rank_chgnet_" + device, rank_check, structures, device, "batched",
         30.0 if quick else 180.0)
    with open(INPUTS / "optimize.pkl", "rb") as f:
        missed = pickle.load(f)[:64 if quick else None]
    step(res, "optimize_" + device, optimize_check, missed, INPUTS / "run/models" / TWO_STAGE,
         30.0 if quick else 120.0)


# ---------------------------------------------------------------------------
# back here: the table
# ---------------------------------------------------------------------------

def report(folder: Path) -> None:
    """``gpu.json`` from the device -> ``results/gpu.json`` and ``results/gpu.md``."""
    data = json.loads((folder / "gpu.json").read_text())
    (HERE / "results/gpu.json").write_text(json.dumps(data, indent=1))
    m = data.get("machine", {})
    lines = [f"Command: `bash benchmarks/gpu.sh` on a GPU machine ({m.get('gpu', 'no GPU')}, "
             f"{m.get('cpus')} CPUs, torch {m.get('torch')}); inputs from "
             "`python benchmarks/gpu.py prepare`.", "",
             "| pre-relaxation | structures | valid_env | structures / min | batch |",
             "|---|---|---|---|---|"]
    for key, v in data.items():
        if key.startswith(("prerelax", "bias")):
            lines.append(f"| {key} | {v.get('structures', '–')} | {v.get('valid_env', '–')} | "
                         f"{v.get('per_minute', 0):,.0f} | {v.get('batch', '–')} |"
                         if "error" not in v else f"| {key} | {v['error']} | | | |")
    lines += ["", "| sampling | rows/s (model + inverse transform) | rows/s (sample stage, "
              "incl. decode) | valid_xtal | workers |", "|---|---|---|---|---|"]
    for name in MODELS:
        v = data.get(f"sample_{name}", {})
        lines.append(f"| ours {name} | {v.get('model_rows_per_s', 0):,.0f} | "
                     f"{v.get('stage_rows_per_s', 0):,.0f} | {v.get('valid_xtal', 0):.3f} | "
                     f"{v.get('workers', '–')} |" if "error" not in v
                     else f"| ours {name} | {v['error']} | | | |")
    ctgan = data.get("ctgan", {})
    if "error" in ctgan:
        lines.append(f"| ctgan | {ctgan['error']} | | | |")
    for name, v in ctgan.items():
        if isinstance(v, dict):
            lines.append(f"| {name} `sample` | {v['rows_per_s']:,.0f} | | | 1 |")
    lines += ["", "| rank / optimize | structures or rows | converged or reached | "
              "per minute |", "|---|---|---|---|"]
    for key, v in data.items():
        if key.startswith(("rank", "optimize")):
            lines.append(f"| {key} | {v.get('structures', v.get('rows', '–'))} | "
                         f"{v.get('converged', v.get('reached', '–'))} | "
                         f"{v.get('per_minute', 0):,.0f} |" if "error" not in v
                         else f"| {key} | {v['error']} | | |")
    (HERE / "results/gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--run", type=Path, required=True, help="run with trained vae/gan-cont")
    sub.add_parser("wheels")
    p = sub.add_parser("run")
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu-out")))
    p.add_argument("--ctgan-path", help="folder with ctgan and its pandas (PYTHONPATH)")
    p = sub.add_parser("report")
    p.add_argument("folder", type=Path)
    args = ap.parse_args()
    if args.what == "prepare":
        prepare(args.run)
    elif args.what == "wheels":
        wheels()
    elif args.what == "run":
        args.out.mkdir(parents=True, exist_ok=True)
        run_checks(args.out, args.device, args.quick, args.ctgan_path)
    else:
        report(args.folder)


if __name__ == "__main__":
    main()
