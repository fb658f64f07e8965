"""Pre-relaxation: move crystals towards a reference environment, keeping symmetry.

The objective of a crystal is ``sum_sites multiplicity * min_k |P_site - P_ref,k|^2
/ N_atoms`` (SO(3) power spectra of the sites against the reference's), a
function of the FREE variables only -- the free cell parameters of the lattice
type and the free coordinates of each Wyckoff site -- so the space group is kept
exactly.  Two optimisers over one batched model, with exact gradients by torch
autograd: scipy's L-BFGS-B one crystal at a time, or a batched L-BFGS with
per-structure memory, trust radius, convergence and early exit on CPU or GPU.
Crystals that miss the environment are rescued (reference density, a wider
cutoff, basin hops).  Each structure has a time budget; one that exceeds it or
blows up is recorded in ``env_error``, not fatal.

Modules, in the order they build on each other:

* ``options``: ``Options``, every limit and tolerance;
* ``problem``: ``Problem``, a crystal as a function of its free variables, its
  bounds, the row at a point, the reference targets, ``Outcome``;
* ``batch``: ``Batch``, many problems as flat tensors, the neighbour search and
  the objective (``batch_loss``, ``loss_and_grad``);
* ``lbfgs``: ``LbfgsState`` and ``lbfgs_init`` / ``lbfgs_step`` over it;
* ``inflight``: the structures of a batched relaxation, rebuilt as they finish;
* ``runner``: ``relax_batched``, the loop with budget sharing and early exit;
* ``scipy_path``: ``relax_scipy``, one crystal with scipy;
* ``rescue``: ``relax_rows``, either path plus the environment check and rescues;
* ``frame``: ``prerelax_row`` and the stage's kernel ``prerelax_frame``.

The stage itself (``legodask prerelax``) is ``legodask.stages.prerelax``.
"""

from .frame import prerelax_frame, prerelax_row
from .options import Options

__all__ = ["Options", "prerelax_frame", "prerelax_row"]
