"""Sending a plan's tasks: one request (`client`, the only module that knows aiohttp), pacing and
retry budgets (`limits`), what an error means for the run (`classify`), and the ways to send
(`backends/`: live requests, OpenAI's Batch API, AceData's tasks).

May import: `planning`, `rules`, `util`, `batchgen.exceptions`. Nothing that keeps: a backend
reaches the journal and the image store only through the objects it is given.
"""
