"""The frame codes of every byte stream procly writes: one table, no overlaps.

A frame starts with a signed 32-bit big-endian header (``HEADER``). A header ``n >= 0``
is a frame of ``n`` bytes of payload; a negative header names the kind of frame::

    code            written by          followed by
    LARGE       -1  Connection, queues  u64 length, then that many bytes (over 2 GiB)
    OUT_OF_BAND -2  Connection          u32 buffer count, sizes; the pickle and its
                                        out-of-band buffers on the stream
    IN_MEMFD    -3  Connection          the same, u64 token; the buffers in a memfd sent
                                        with it, placed by _memfd_reuse.buffer_layout
    NAMED_BACK  -4  Connection          u32 count, u64 tokens: memfds handed back for reuse
    SPILLED     -5  queues              u64 0: the item is in the memfd sent with it
    BATCH       -6  queues              u64 offset, u32 k: items left at a producer's exit,
                                        in the memfd (and k more) sent with it

The pool's own messages ride inside Connection frames (see ``_pool_messages``); a
queue's stream carries plain frames, ``LARGE`` and its own two codes only.
"""

from __future__ import annotations

import struct

# The table of codes (tests/test_frames.py checks it); frame_header() is imported by name.
__all__ = ["BATCH", "HEADER", "IN_MEMFD", "LARGE", "NAMED_BACK", "OUT_OF_BAND", "SPILLED"]

HEADER = struct.Struct("!i")
_U64 = struct.Struct("!Q")
LARGE = -1
OUT_OF_BAND = -2
IN_MEMFD = -3
NAMED_BACK = -4
SPILLED = -5
BATCH = -6


def frame_header(n: int) -> bytes:
    """The header of a plain frame of *n* payload bytes (``LARGE`` and a u64 from 2 GiB)."""
    return HEADER.pack(n) if n < 0x7FFFFFFF else HEADER.pack(LARGE) + _U64.pack(n)
