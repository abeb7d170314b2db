"""Arrow arrays to and from numpy through their buffers.

pa.array() on Python values or numpy arrays, and numpy's view of an Arrow array
(np.asarray, to_numpy), import pandas to ask whether they are pandas objects: a start-up cost
every run would pay with no other use for it (see bench/README.md). Planning and the results make and read their
arrays here instead.
"""
from __future__ import annotations


def int64_array(values):
    """Whole numbers (a list or a numpy array) as an Arrow int64 array without nulls."""
    import numpy as np
    import pyarrow as pa
    values = np.ascontiguousarray(values, np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def numpy_ints(array):
    """An Arrow integer array without nulls as numpy int64 (a view when it is int64 already)."""
    import numpy as np
    width = array.type.bit_width // 8
    values = np.frombuffer(array.buffers()[1], f"i{width}", len(array), array.offset * width)
    return values if width == 8 else values.astype(np.int64)


def binary_array(values: list, kind=None, present=None):
    """bytes values as an Arrow array of `kind` (large_binary unless said; string and binary
    have 32-bit offsets, so their values must total less than 2 GiB). `present`: a numpy bool
    array, False where the value is null (its bytes are then b"")."""
    import numpy as np
    import pyarrow as pa
    kind = pa.large_binary() if kind is None else kind
    large = pa.types.is_large_binary(kind) or pa.types.is_large_string(kind)
    offsets = np.zeros(len(values) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, values), np.int64, len(values)), out=offsets[1:])
    if not large:
        offsets = offsets.astype(np.int32)
    validity, nulls = validity_of(present)
    return pa.Array.from_buffers(kind, len(values), [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(values))],
                                 null_count=nulls)


def bool_array(values, present=None):
    """A numpy bool array as an Arrow bool array; `present` as for binary_array."""
    import numpy as np
    import pyarrow as pa
    validity, nulls = validity_of(present)
    bits = np.packbits(values, bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(values), [validity, pa.py_buffer(bits)], null_count=nulls)


def validity_of(present) -> tuple:
    """(Arrow validity buffer, null count) for a numpy bool array (None: no nulls)."""
    import numpy as np
    import pyarrow as pa
    nulls = 0 if present is None else len(present) - int(np.count_nonzero(present))
    return (pa.py_buffer(np.packbits(present, bitorder="little")) if nulls else None), nulls
