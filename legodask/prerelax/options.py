"""How to pre-relax: the optimisers' limits and tolerances, the rescues and the
per-structure time budget, in one frozen record shared by every path."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    """How to pre-relax: optimiser limits, tolerances and the per-structure budget."""

    maxiter: int = 600          # L-BFGS-B iterations (the reference: 400 + 200)
    nelder_mead: int = 0        # derivative-free iterations before L-BFGS-B
    density: float = 1.5        # rescue: restart at the reference's volume per atom when
    #                             the start's is off by more than this factor (0: never)
    wide_rcut: float = 3.0      # rescue: relax first with this descriptor cutoff (Å),
    #                             then with the reference's (0: no such rescue)
    hops: int = 4               # rescue: basin-hopping restarts (from the start, see hop_step)
    steps: int = 600            # batched L-BFGS steps
    fmax: float = 1e-4          # converged: largest scaled gradient component
    loss_tol: float = 1e-8      # converged: loss below this
    ftol: float = 1e-8          # converged when a step gains less than this (absolute)
    patience: int = 30          # batched: converged when the loss gains less than
    #                             max(1e-4 loss, patience x ftol) in so many steps
    hop_step: float = 0.5       # basin hop i moves each atom's free coordinates by about
    #                             (i + 1) x this (Å) from the start ...
    hop_strain: float = 0.05    # ... and strains its cell parameters by (i + 1) x this
    max_step: float = 0.2       # batched: largest step per structure (scaled, ~Å)
    budget: float = 60.0        # seconds per structure (batched: its share of each step)
    batch_size: int = 256
    scipy_unit: float = 0.1     # Å per scaled variable in L-BFGS-B (its first step is 1 unit)
    box: float = 0.5            # when L-BFGS-B runs off to an empty cell (a length at
    #                             its bound), it starts again moving each variable at
    #                             most this far (about Å) per round (0: never)
    seed: int = 0
