"""Known structures into the structure table.

Sources: an ASE database (``.db``), a CIF file or a folder of CIFs, an extxyz file,
or a table (CSV in the reference implementation's 39-column layout or in the
table's own layout, or Parquet).  Each structure is symmetrised with spglib
(``symprec``) and written as one row; the source's own key-value data (energies,
labels) become columns.  A file that cannot be read is reported by name and
skipped; the rest is ingested (``legodask.stages.ingest``).

Modules: ``readers`` (a source split into items, each read inside a task),
``layouts`` (which layout a CSV/Parquet file is in), ``ingest`` (the kernel: read,
symmetrise, check, and the training filter) and ``sacada`` (the training data,
fetched once and verified by checksum).
"""
