"""Showing what a run kept: `batchgen status` (`status`), the comparison report and contact sheet
(`report`), the progress bar (`progress`), and `batchgen export` (`exports`).

May import: `keeping`, `planning`, `rules`, `util`, `batchgen.exceptions`. Nothing that sends.
"""
