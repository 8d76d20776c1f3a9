"""procly's Pickler: cloudpickle's, with procly's reducers and ``__main__`` rule (see
procly._serialization, which imports this module only when an object needs it: plain
data never pays for importing cloudpickle)."""

from __future__ import annotations

import pickle
import types
from typing import Any

import cloudpickle

from ._errors import PicklingError
from ._serialization import (
    _OPEN_FILES,
    _describe,
    _extra_reducers,
    _main_reference,
    _module_attr,
    _module_singleton_method,
    _pending_reducers,
    register_pending,
)

__all__ = ["Pickler"]


class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle's Pickler with procly's reducers and ``__main__`` rule (see module doc).

    ``main_by_reference=False`` copies ``__main__`` functions and classes by value even
    when the main module is importable: for receivers that do not run our main script
    (a Dask worker).
    """

    main_by_reference = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if _pending_reducers:
            register_pending()
        super().__init__(*args, **kwargs)

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        custom = _extra_reducers.get(cls)
        if custom is not None:
            return custom(obj)
        if (cls is types.FunctionType or isinstance(obj, type)) and getattr(obj, "__module__", None) in (
            "__main__",
            "__mp_main__",
        ):
            reference = _main_reference(obj) if self.main_by_reference else None
            if reference is not None:
                return reference
        elif cls in _OPEN_FILES:
            # cloudpickle would copy a readable file's whole content into the pickle.
            raise PicklingError(
                f"cannot pickle {_describe(obj)}: an open file cannot be sent to another process; "
                "send its path (and open it there) or its content instead"
            )
        elif cls is memoryview and obj.contiguous:
            return memoryview, (pickle.PickleBuffer(obj),)
        elif cls is types.MethodType or cls is types.BuiltinMethodType:
            reference = _module_singleton_method(obj)
            if reference is not None:
                return _module_attr, reference
            if cls is types.MethodType:
                # As plain pickle does: the object it is bound to, and the method's name.
                # (cloudpickle would copy a classmethod's code by value, losing its module.)
                name = obj.__func__.__name__
                if getattr(obj.__self__, name, None) == obj:
                    return getattr, (obj.__self__, name)
        return super().reducer_override(obj)
