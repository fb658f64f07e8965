"""Symmetry augmentation: each training crystal as many tabular rows.

Two sources of rows (paper section III-A, Supplement S4-B/C; METHOD.md section 2):

* **subgroup representations** -- the same crystal written in a maximal t- or
  k-subgroup of its space group (pyxtal's ``subgroup_once``): diamond (227, 8a)
  is also (216, 4a 4d), (166, 6c), (141, 4a), ...  A representation is kept when it
  is within the table's limits, new for its parent and still has the target
  environment;
* **orbit-representative swaps** -- each Wyckoff site may be written by any atom
  of its orbit, so one representation gives several rows.

The stage (``legodask.stages.augment``) runs one task per training structure.
Every random choice of a task (pyxtal's subgroup choices, the swaps, the tiny
distortion) comes from numpy
generators seeded by ``(run seed, hash of the structure id, stream)``, so that a
table does not depend on how many workers or partitions computed it.  pyxtal's own
perturbation draws from numpy's global generator, so it is switched off
(``eps=0``) and the distortion is applied here, within each Wyckoff position.
A subgroup try that raises is a failed try, counted in ``augment_errors``; a
structure that fails as a whole or runs past its time-out gives one row with
``valid_xtal`` false and the reason in ``error``; the stage goes on.

Modules: ``params`` (what a run does, the presets, each task's random streams),
``subgroups`` (a structure's representations), ``timeout`` (a structure's time-out)
and ``frame`` (the kernel, ``augment_frame``).
"""
