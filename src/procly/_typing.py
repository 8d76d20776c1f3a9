"""``typing`` names needed at run time, without importing ``typing`` (which costs every
process a few milliseconds at start): what type checkers see is typing's own."""

from __future__ import annotations

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import overload as overload
else:

    def overload(func):  # noqa: ANN001, ANN201 - the overloads are for type checkers only
        return func
