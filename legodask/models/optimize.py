"""Rounds of optimisation for the rows a pre-relaxation left short of the environment:
the optimisation stage's kernel (``optimize_frame``).

A round takes each row that still misses the environment and starts latent vectors
for it: from the two-stage model's encoder q(z | x, c) (the posterior mean in round
1, a draw from the posterior after that) and from the prior (the control's draw of
the round, then more; ``LatentOptions.starts`` in all, each seeded by the row's id
and the round).  It moves them all down the environment loss through the frozen
decoder (``latent``), keeps the lowest, and hands the decoded row to the
pre-relaxation (``prerelax_frame``: the direct optimisation of the free variables,
its rescues included).  ``resample=True`` is the control: a fresh
latent vector from the prior each round (seeded the same way), no latent steps, the
same direct optimisation.  The discrete part of a row is never changed, so a row
keeps its space group and Wyckoff set.

A round's result replaces the row when it reaches the environment or lowers its
loss (as a rescue does); the row keeps its id and says which round it holds
(``round``, 0: the pre-relaxation's own) and how many latent steps it took in all
(``z_steps``); ``iterations`` and ``seconds`` add up over the rounds.  Rows whose
discrete values the model never saw pass through unchanged.
"""

from __future__ import annotations

import functools
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import schema as S
from .. import store
from ..crystal.environment import Environment, get_environment
from ..crystal.frame import decode_frame
from ..prerelax.frame import prerelax_frame
from ..prerelax.options import Options
from . import load
from .cvae import CVAE
from .encoding import Encoder
from .latent import LatentOptions, optimise_latent

# the columns a round rewrites: the structure and the pre-relaxation's outcome
_ROUND_COLUMNS = [*S.COLUMNS, *S.PRERELAX]


@functools.lru_cache(maxsize=2)
def _load(model_dir: str, stamp: float, device: str) -> tuple[CVAE, Encoder]:
    """A two-stage model in double precision, cached per worker process (``stamp``:
    its file's mtime)."""
    model, encoder = load(Path(model_dir), torch.device(device))
    if not isinstance(model, CVAE):
        raise ValueError(f"latent optimisation needs a two-stage model (cvae), not {model.kind}")
    model.enc.double().eval()
    model.dec.double().eval()
    return model, encoder


def load_cvae(model_dir: str | Path, device: str = "cpu") -> tuple[CVAE, Encoder]:
    """The trained two-stage model of ``model_dir`` (double precision) and its encoder."""
    stamp = (Path(model_dir) / store.MODEL_BEST).stat().st_mtime
    return _load(str(model_dir), stamp, device)


def row_noise(ids: Sequence[str], round_: int, seed: int, dim: int) -> np.ndarray:
    """(len(ids), dim) standard normal draws, one stream per row id and round: the
    same whichever partition or worker holds the row."""
    return np.stack([np.random.default_rng([seed, round_, zlib.crc32(str(i).encode())])
                     .standard_normal(dim) for i in ids]) if len(ids) else np.zeros((0, dim))


def posterior(model: CVAE, encoder: Encoder, df: pd.DataFrame
              ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, np.ndarray]:
    """The discrete codes of rows and the mean and standard deviation of q(z | x, c);
    ``ok``: the rows whose discrete values are all among the model's categories."""
    x = encoder.transform(df, dtype=np.float64)
    ok = np.ones(len(df), bool)
    for s in model.disc_spans:
        ok &= x[:, s.offset:s.offset + s.dim].sum(1) == 1
    t = torch.as_tensor(x, device=model.device)
    with torch.no_grad():
        mu, logvar = model.enc(torch.cat([t[:, model.cont_idx], t[:, model.disc_idx]], 1))
    return model.codes(x), mu, torch.exp(0.5 * logvar), ok


def decode_rows(model: CVAE, encoder: Encoder, codes: np.ndarray, z: torch.Tensor
                ) -> pd.DataFrame:
    """Table rows decoded from latent vectors ``z`` given the discrete ``codes``,
    without noise: what ``steer.LatentObjective`` sees (hard modes)."""
    with torch.no_grad():
        disc = model.one_hot(codes).to(z.device, z.dtype)
        raw = model.decode_latent(z, disc)
        cont = raw.clone()
        cont[:, model.scalars] = torch.tanh(raw[:, model.scalars])
        return encoder.inverse_transform(model.features(cont, disc).cpu().numpy())


def optimize_frame(df: pd.DataFrame, model_dir: str, env: Environment | str = "graphite",
                   rounds: int = 4, resample: bool = False,
                   latent: LatentOptions = LatentOptions(), options: Options = Options(),
                   device: str = "auto", seed: int = 0) -> pd.DataFrame:
    """The stage kernel over a partition of pre-relaxed rows: ``rounds`` rounds for the
    rows that were relaxed and missed the environment (see the module's text)."""
    env = get_environment(env)
    where = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"
    if where == "cpu":
        torch.set_num_threads(1)  # small tensors; dask runs one task per core
    extra = {c: str(t) for c, t in df.dtypes.items() if c not in S.COLUMNS}
    extra.update(S.OPTIMIZE_DTYPES)
    out = df.reset_index(drop=True).assign(**{S.ROUND: 0, S.Z_STEPS: 0})
    loss = out[S.LOSS].to_numpy(float)
    missed = np.isfinite(loss) & ~out[S.VALID_ENV].fillna(False).astype(bool).to_numpy()
    todo = np.flatnonzero(missed)
    for r in range(1, rounds + 1):
        if not len(todo):
            break
        t0 = time.perf_counter()
        model, encoder = load_cvae(model_dir, where)
        codes, mu, std, ok = posterior(model, encoder, out.iloc[todo])
        todo, codes, mu, std = todo[ok], codes[ok], mu[ok], std[ok]  # unseen values: as is
        if not len(todo):
            break
        noise = torch.as_tensor(row_noise(out[S.ID].iloc[todo].tolist(), r, seed, mu.shape[1]),
                                device=mu.device)
        steps = np.zeros(len(todo), int)
        if resample:
            z = noise
        else:
            z0 = _starts(mu, std, noise, out[S.ID].iloc[todo].tolist(), r, seed, latent.starts)
            z, steps = _best_latent(model, encoder, codes, z0, env, latent)
        starts = out.iloc[todo][list(df.columns)].reset_index(drop=True)
        decoded = decode_rows(model, encoder, codes, z)
        starts[[*S.TABULAR, *S.EL]] = decoded[[*S.TABULAR, *S.EL]].to_numpy(dtype=object)
        starts = decode_frame(S.conform(starts, {c: t for c, t in extra.items()
                                                 if c in df.columns}), min_distance=0.0)
        z_seconds = (time.perf_counter() - t0) / len(todo)
        new = prerelax_frame(starts, env, device, options=options)
        todo = _merge(out, todo, new, r, steps, z_seconds)
    return S.conform(out, extra).set_axis(df.index)


def _starts(mu: torch.Tensor, std: torch.Tensor, noise: torch.Tensor, ids: list[str],
            round_: int, seed: int, n: int) -> torch.Tensor:
    """(n, rows, d) latent starts: the posterior's (its mean in round 1, a draw after),
    then the control's prior draw of this round, then further prior draws."""
    def draw(stream: int) -> torch.Tensor:
        return torch.as_tensor(row_noise(ids, round_, stream, mu.shape[1]), device=mu.device)

    post = mu if round_ == 1 else mu + std * draw(seed + 1)
    return torch.stack([post, noise, *(draw(seed + k) for k in range(2, n))][:n])


def _best_latent(model: CVAE, encoder: Encoder, codes: np.ndarray, starts: torch.Tensor,
                 env: Environment, latent: LatentOptions) -> tuple[torch.Tensor, np.ndarray]:
    """Each row's latent vector of lowest loss after moving all its ``starts`` down
    the environment loss (one batch), and the latent steps all its starts took."""
    k, n, d = starts.shape
    res = optimise_latent(model, encoder, np.concatenate([codes] * k), starts.reshape(k * n, d),
                          env, latent, env.params)
    loss = np.nan_to_num(res.loss.reshape(k, n), nan=np.inf)
    best = torch.as_tensor(loss.argmin(0), device=starts.device)
    z = res.z.reshape(k, n, d)[best, torch.arange(n, device=starts.device)]
    return z, res.steps.reshape(k, n).sum(0)


def _put(out: pd.DataFrame, column: str, rows: np.ndarray, values: Any) -> None:
    """Set ``out[column]`` at positions ``rows``, keeping the column's dtype."""
    col = out[column].to_numpy(copy=True)
    col[rows] = values
    out[column] = col


def _merge(out: pd.DataFrame, todo: np.ndarray, new: pd.DataFrame, round_: int,
           steps: np.ndarray, z_seconds: float) -> np.ndarray:
    """Write a round's results into ``out`` where they are better (the environment
    reached, or a lower loss), the costs of the round into every row it took; the
    rows that still miss the environment."""
    old = out[S.LOSS].to_numpy(float)[todo]
    new_loss = new[S.LOSS].to_numpy(float)
    valid = new[S.VALID_ENV].fillna(False).astype(bool).to_numpy()
    better = valid | (np.isfinite(new_loss) & (new_loss < old))
    costs = {S.ITERATIONS: out[S.ITERATIONS].to_numpy()[todo] + new[S.ITERATIONS].to_numpy(),
             S.SECONDS: out[S.SECONDS].to_numpy()[todo] + new[S.SECONDS].to_numpy()
             + z_seconds,
             S.Z_STEPS: out[S.Z_STEPS].to_numpy()[todo] + steps}
    rows = todo[better]
    for c in _ROUND_COLUMNS:
        _put(out, c, rows, new[c].to_numpy()[better])
    _put(out, S.ROUND, rows, round_)
    for c, dtype in S.TOPOLOGY_DTYPES.items():   # not analysed (the stage finds the nets)
        if c in out.columns:
            _put(out, c, rows, -1 if dtype.startswith("int") else None)
    for c, v in costs.items():
        _put(out, c, todo, v)
    return todo[~out[S.VALID_ENV].to_numpy()[todo].astype(bool)]
