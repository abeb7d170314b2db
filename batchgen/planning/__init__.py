"""From a table and settings to a plan: the settings and job files (`settings`), the input table
(`reader`), an edits table's input images (`edits`), the plan and its task ids (`tasks`), the ids
of the previous scheme (`identity`), and what `batchgen plan` prints (`summary`).

May import: `rules`, `util`, `batchgen.exceptions`. Nothing here sends or keeps.
"""
