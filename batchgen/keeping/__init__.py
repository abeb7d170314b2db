"""What a run keeps on disk: the output folder and its lock (`outdir`), the append-only journal
and its replay (`journal`), images checked and written atomically (`store`; SVG and GIF checks in
`imagecheck`), and `results.parquet` with its schema (`results`).

May import: `planning`, `rules`, `util`, `batchgen.exceptions`. Nothing that sends.
"""
