"""Facts about the outside world, as the rest of batchgen reads them: the providers
(`providers`: tokens, endpoints, error dialects, the codes that stop a run), the models
(`models`: what each accepts), the prices (`pricing`, over `batchgen/data/prices.json`) and the
ways to send (`modes`: what differs between live and Batch API mode before anything is sent).

May import: `util`, `batchgen.exceptions`. Nothing here does I/O but reading its own data files.
"""
