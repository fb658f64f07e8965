"""Crystals: rows of the structure table and what they mean.

``wyckoff`` (Wyckoff positions as arrays: orbits, projection, the one wrap), ``cell``
(cell constraints, metric, shortest distance), ``decode`` (one row -> ``Decoded``, or
the reason it is no crystal), ``frame`` and ``overlap`` (the same over a partition,
vectorised), ``convert`` (rows <-> pyxtal and ASE; the symmetry key), ``environment``
(target local environments, the bond rule), ``descriptor`` (SO(3) power spectra),
``fingerprint`` (a crystal's identity), ``topology`` and ``quotient`` (dimensionality,
net topology)."""
