"""`NamedTuple` for the modules on the launch critical path, without importing `typing`.

Decision: `typing` costs ~2.5 ms to import (with `contextlib`, which it pulls in), and every
`typing.NamedTuple` class adds its own checks on top of `collections.namedtuple`; the
configuration, target, plan and environment records are all built before the first worker
is spawned, where each millisecond delays the agent's first line. This is the same class
statement built directly on `collections.namedtuple` (fields from the annotations, defaults
from the class body, methods and properties kept); mypy sees `typing.NamedTuple` itself, so
every field is type-checked as before. Modules off the launch path use `typing` as usual.

Modules that use it keep `from __future__ import annotations`: annotations stay strings, and
only their names are read here.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    from collections import namedtuple

    # What typing.NamedTuple also refuses to let a class body redefine.
    _PROHIBITED = frozenset(
        {"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults",
         "_make", "_replace", "_asdict", "_source"}
    )  # fmt: skip
    _SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})

    class _NamedTupleMeta(type):
        def __new__(mcls, name, bases, namespace):
            if bases == ():  # NamedTuple itself
                return super().__new__(mcls, name, bases, namespace)
            if bases != (NamedTuple,):
                raise TypeError("a NamedTuple can only inherit from NamedTuple")
            fields = list(namespace.get("__annotations__", {}))
            defaults = [namespace[field] for field in fields if field in namespace]
            if fields[len(fields) - len(defaults) :] != [f for f in fields if f in namespace]:
                raise TypeError(f"{name}: a field without a default follows one with a default")
            cls = namedtuple(name, fields, defaults=defaults, module=namespace["__module__"])
            cls.__annotations__ = dict(namespace.get("__annotations__", {}))
            for key, value in namespace.items():
                if key in _PROHIBITED:
                    raise AttributeError(f"cannot overwrite NamedTuple attribute {key}")
                if key not in _SPECIAL and key not in fields:
                    setattr(cls, key, value)
            return cls

    class NamedTuple(metaclass=_NamedTupleMeta):
        """Base class of a named tuple: `class Point(NamedTuple): x: int; y: int = 0`."""
