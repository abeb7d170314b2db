"""Facts about the outside world, as the rest of batchgen reads them: the providers
(`providers`: tokens, endpoints, error dialects, the codes that stop a run), the models
(`models`: the catalog `batchgen/data/models.json`, what each provider serves and each model accepts),
the prices (`pricing`, over the catalog's prices) and the
ways to send (`modes`: what differs between live and Batch API mode before anything is sent).

May import: `util`, `batchgen.exceptions`. Nothing here does I/O but reading its own data files.
"""
