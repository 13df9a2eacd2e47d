"""`new_tuple(cls, values)`: a NamedTuple built without calling its generated `__new__`.

A NamedTuple's `__new__` is generated Python code (about 1.7k instructions a call, defaults
included); `tuple.__new__(cls, values)` builds the same object in C. Billing builds a few per
request on the hot path (estimates, usage, settlements, the stores' holds and replies), so
those places use this, passing every field in order, defaults included. Elsewhere, call
the class as usual.
"""

from __future__ import annotations

__all__ = ["new_tuple"]

new_tuple = tuple.__new__
