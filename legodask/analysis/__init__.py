"""What is made of a run's tables: deduplication, the paper's counts, the report,
SQL queries, exports, summaries, and the Python API to the tables."""
