"""The command line: a thin click layer over `batchgen.commands` (`main`), and the `simulate`
command that serves the built-in simulator (`simulate`).

May import: everything. Nothing imports it.
"""
