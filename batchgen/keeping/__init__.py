"""What a run keeps on disk: the output folder and its lock (`outdir`), the append-only journal
and its replay (`journal`), images written atomically (`store`), and `results.parquet` with its
schema (`results`).

May import: `planning`, `rules`, `util`, `batchgen.exceptions`. Nothing that sends.
"""
