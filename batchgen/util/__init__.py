"""Small tools that know nothing of images or APIs: JSON on the hot path (`fastjson`), Arrow
arrays through their buffers (`arrowbuf`), the garbage collector held off (`gcpause`), and the
one place that configures logging (`logs`).

May import: `batchgen.exceptions` and `batchgen._version` alone.
"""
