"""``typing`` names needed at run time, without importing ``typing`` (which costs every
process a few milliseconds at start): what type checkers see is typing's own."""

from __future__ import annotations

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Generic as Generic
    from typing import TypeVar as TypeVar
    from typing import overload as overload
else:
    from types import GenericAlias

    class Generic:
        """A base class subscriptable at run time (``ApplyResult[int]``), as typing's is."""

        __slots__ = ()
        __class_getitem__ = classmethod(GenericAlias)

    def TypeVar(name, *constraints, **options):  # noqa: ANN001, ANN002, ANN003, ANN201, N802
        return name  # only ever subscripts Generic at run time

    def overload(func):  # noqa: ANN001, ANN201 - the overloads are for type checkers only
        return func
