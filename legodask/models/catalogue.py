"""Stage 1 of a two-stage model: the discrete part of a row -- space group, Wyckoff
indices and elements -- drawn from the combinations seen in training.

Every combination is checked once, when it is added (``check``): its Wyckoff indices
exist in its group, its conventional cell holds at most ``max_atoms`` atoms, a used
site has an element, and no position without a free coordinate holds two sites.  A
combination that fails is kept out of the support with its reason (``rejected``), so
every row drawn is a valid combination by construction.

Probabilities are the training counts tempered, ``p ~ count ** (1 / temperature)``:
1 is the empirical distribution of the training table (the baseline), higher values
draw rare combinations more often.  Sampling within classes (``Classes``) restricts
the support and renormalises, so it costs what unrestricted sampling costs.
Other proposers of combinations (a model over the one-hot columns) add theirs with
``add``, through the same check.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from .classes import Classes

NO_SITE = "no used site"
NO_POSITION = "Wyckoff index {wp} does not exist in space group {spg}"
TOO_MANY = "{natoms} atoms in the conventional cell, more than {limit}"
NO_ELEMENT = "site {k} has no element"
FIXED_TWICE = "Wyckoff position {label} has no free coordinate and holds {n} sites"


def check(spg: int, wps: list[int], elements: list[Any] | None, max_atoms: int) -> str | None:
    """Why a discrete row (values, not codes) is not a valid combination; ``None`` when
    it is.  ``elements``: one per site (``None`` when the table has one element)."""
    from ..crystal.wyckoff import group_info, wyckoff_ops

    used = [(k, w) for k, w in enumerate(wps) if w >= 0]
    if not used:
        return NO_SITE
    n_wp = group_info(spg)[1] if 1 <= spg <= 230 else 0
    for _, w in used:
        if w >= n_wp:
            return NO_POSITION.format(wp=w, spg=spg)
    if elements is not None:
        for k, _ in used:
            if not isinstance(elements[k], str):
                return NO_ELEMENT.format(k=k)
    ops = [wyckoff_ops(spg, w) for _, w in used]
    fixed = Counter(o.label for o in ops if o.dof == 0)
    for label, n in fixed.items():
        if n > 1:
            return FIXED_TWICE.format(label=label, n=n)
    natoms = sum(o.multiplicity for o in ops)
    if natoms > max_atoms:
        return TOO_MANY.format(natoms=natoms, limit=max_atoms)
    return None


class Catalogue:
    """The valid discrete combinations seen, their counts, and draws from them.

    ``columns``: the discrete columns in the encoder's order, each with its
    categories; a combination is a row of category indices (codes), one per column.
    """

    def __init__(self, columns: dict[str, list[Any]], spg: str, wp: list[str],
                 el: list[str], max_atoms: int = 2000, temperature: float = 1.0):
        self.columns = columns
        self.names = list(columns)
        self.spg, self.wp, self.el = spg, wp, el
        self.max_atoms = max_atoms
        self.temperature = temperature
        self.codes = np.zeros((0, len(self.names)), np.int64)
        self.counts = np.zeros(0)
        self.rejected: dict[str, int] = {}

    # -- the combinations' values ------------------------------------------------
    def value(self, codes: np.ndarray, column: str) -> np.ndarray:
        """The values of ``column`` in combinations ``codes``."""
        cats = np.asarray(self.columns[column], dtype=object)
        return cats[codes[:, self.names.index(column)]]

    def spgs(self, codes: np.ndarray | None = None) -> np.ndarray:
        return self.value(self.codes if codes is None else codes, self.spg).astype(int)

    def wyckoff(self, codes: np.ndarray | None = None) -> np.ndarray:
        codes = self.codes if codes is None else codes
        return np.stack([self.value(codes, c) for c in self.wp], 1).astype(int)

    # -- building ----------------------------------------------------------------
    def add(self, codes: np.ndarray, counts: np.ndarray | None = None) -> None:
        """Add combinations (rows of codes, repeated or with ``counts``): the valid ones
        join the support (counts summed), the others are counted by reason."""
        codes = np.asarray(codes, np.int64).reshape(-1, len(self.names))
        counts = np.ones(len(codes)) if counts is None else np.asarray(counts, float)
        new, inverse = np.unique(codes, axis=0, return_inverse=True)
        weight = np.bincount(inverse.reshape(-1), weights=counts, minlength=len(new))
        spg, wps = self.spgs(new), self.wyckoff(new)
        els = (np.stack([self.value(new, c) for c in self.el], 1) if self.el else None)
        keep = np.zeros(len(new), bool)
        for i in range(len(new)):
            reason = check(int(spg[i]), wps[i].tolist(),
                           None if els is None else list(els[i]), self.max_atoms)
            if reason is None:
                keep[i] = True
            else:
                self.rejected[reason] = self.rejected.get(reason, 0) + int(weight[i])
        all_codes = np.concatenate([self.codes, new[keep]])
        all_counts = np.concatenate([self.counts, weight[keep]])
        self.codes, inverse = np.unique(all_codes, axis=0, return_inverse=True)
        self.counts = np.bincount(inverse.reshape(-1), weights=all_counts,
                                  minlength=len(self.codes))

    # -- drawing -----------------------------------------------------------------
    def probabilities(self, classes: Classes | None = None,
                      temperature: float | None = None) -> np.ndarray:
        """Each combination's probability, within ``classes`` (zero outside, the rest
        renormalised); a ``ValueError`` when no combination is within them."""
        t = self.temperature if temperature is None else temperature
        p = self.counts ** (1.0 / t)
        if classes is not None:
            p = np.where(classes.allows(self.spgs(), self.wyckoff()), p, 0.0)
        if not p.sum() > 0:
            raise ValueError(f"no training combination has {classes.describe() if classes else 'a row'}")
        return p / p.sum()

    def sample(self, n: int, generator: torch.Generator, classes: Classes | None = None,
               temperature: float | None = None) -> np.ndarray:
        """``n`` combinations (rows of codes) drawn within ``classes``: no rejection."""
        p = torch.as_tensor(self.probabilities(classes, temperature))
        idx = torch.multinomial(p, n, replacement=True, generator=generator)
        return self.codes[idx.numpy()]

    # -- persistence (tensors and plain data: ``checkpoint.load`` reads it) ---------
    def state_dict(self) -> dict[str, Any]:
        return {"codes": torch.as_tensor(self.codes), "counts": torch.as_tensor(self.counts),
                "rejected": dict(self.rejected)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.codes = state["codes"].cpu().numpy().astype(np.int64)
        self.counts = state["counts"].cpu().numpy().astype(float)
        self.rejected = dict(state["rejected"])
