"""``record``: the standard ``dataclass`` decorator, without its import cost.

``hostagent check`` runs every minute as a fresh process. Half of its start was ``dataclasses``:
the module itself imports ``inspect`` (and with it ``ast``, ``dis`` and ``tokenize``), and the
decorator writes and compiles six methods for each of some sixty classes. ``record`` compiles
``__init__`` alone and shares one ``__eq__``, ``__hash__``, ``__repr__`` and frozen ``__setattr__``
between all classes. ``dataclasses`` is imported only when something asks for its view of a
record (``dataclasses.fields``, ``asdict``, ``is_dataclass``): the record then answers as the
standard decorator's class would.

Type checkers see the standard ``dataclass``, ``field`` and ``replace`` themselves. What this code
base uses is supported: plain defaults, ``field(default_factory=...)`` and ``frozen``. Anything
else (``__post_init__``, ``InitVar``, inheritance, other field options) is refused, not mishandled.
"""
from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING, Any

__all__ = ["field", "field_names", "is_record", "record", "replace"]

if TYPE_CHECKING:
    from dataclasses import dataclass as record
    from dataclasses import field, replace
else:
    def record(cls: type | None = None, /, *, frozen: bool = False) -> Any:
        """Decorate ``cls`` as ``dataclasses.dataclass(frozen=frozen)`` would."""
        if cls is None:
            return lambda c: _build(c, frozen)
        return _build(cls, frozen)

    def field(*, default_factory: Callable[[], Any]) -> Any:
        """A field whose default is made afresh for each instance by ``default_factory``."""
        return _Factory(default_factory)

    def replace(obj: Any, /, **changes: Any) -> Any:
        """A copy of the record ``obj`` with ``changes`` (``dataclasses.replace``)."""
        return type(obj)(**({name: getattr(obj, name) for name in obj._record_names} | changes))


def field_names(obj: Any) -> tuple[str, ...]:
    """The field names of a record class or instance, in order."""
    names: tuple[str, ...] = obj._record_names
    return names


def is_record(obj: Any) -> bool:
    """Whether ``obj`` is a record class or instance."""
    return hasattr(obj, "_record_names")


class _Factory:
    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make

    def __repr__(self) -> str:
        return "<factory>"


_NO_DEFAULT = object()
_FACTORY = _Factory(object)  # the default in a generated __init__: "make one", shown as dataclasses shows it


def _build(cls: type, frozen: bool) -> type:
    if cls.__bases__ != (object,) or hasattr(cls, "__post_init__"):
        raise TypeError(f"record {cls.__qualname__}: inheritance and __post_init__ need dataclasses.dataclass")
    specs = []
    for name, annotation in vars(cls).get("__annotations__", {}).items():  # inspect's way costs an import
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        if text.startswith(("ClassVar", "typing.ClassVar")):
            continue
        if text.startswith(("InitVar", "dataclasses.InitVar")):
            raise TypeError(f"record {cls.__qualname__}: InitVar needs dataclasses.dataclass")
        default = vars(cls).get(name, _NO_DEFAULT)
        if type(default).__module__ == "dataclasses":
            default = _from_standard_field(cls, name, default)
        if type(default).__hash__ is None:  # a list, dict or set shared by every instance
            raise ValueError(f"record {cls.__qualname__}: mutable default for {name!r}: use field(default_factory=...)")
        if isinstance(default, _Factory):
            delattr(cls, name)
        specs.append((name, default))
    names = tuple(name for name, _ in specs)
    methods: dict[str, Any] = {
        "__init__": _init(cls, specs, frozen),
        "__repr__": _repr,
        "__eq__": _eq,
        "__hash__": _hash if frozen else None,  # mutable and comparable is unhashable, as dataclasses makes it
        "__match_args__": names,
        "_record_names": names,
        "_record_values": _values(names),
        "__dataclass_fields__": _StandardView("__dataclass_fields__", specs, frozen),
        "__dataclass_params__": _StandardView("__dataclass_params__", specs, frozen),
    }
    if frozen:
        methods |= {"__setattr__": _frozen_setattr, "__delattr__": _frozen_delattr}
    if not cls.__doc__:
        methods["__doc__"] = f"{cls.__name__}({', '.join(names)})"
    for name, method in methods.items():
        setattr(cls, name, method)
    return cls


def _from_standard_field(cls: type, name: str, spec: Any) -> Any:
    """The default of a ``dataclasses.field``; options other than a default are refused."""
    import dataclasses

    if not (spec.init and spec.repr and spec.compare and spec.hash is None and not spec.metadata
            and spec.kw_only is dataclasses.MISSING):
        raise TypeError(f"record {cls.__qualname__}.{name}: field options beyond a default need dataclasses")
    if spec.default_factory is not dataclasses.MISSING:
        return _Factory(spec.default_factory)
    if spec.default is not dataclasses.MISSING:
        setattr(cls, name, spec.default)
        return spec.default
    delattr(cls, name)
    return _NO_DEFAULT


def _init(cls: type, specs: list[tuple[str, Any]], frozen: bool) -> Callable[..., None]:
    scope: dict[str, Any] = {"_set": object.__setattr__, "_FACTORY": _FACTORY}
    params, body, defaulted = [], [], False
    for i, (name, default) in enumerate(specs):
        value = name
        if isinstance(default, _Factory):
            defaulted = True
            scope[f"_f{i}"] = default.make
            params.append(f"{name}=_FACTORY")
            value = f"_f{i}() if {name} is _FACTORY else {name}"
        elif default is not _NO_DEFAULT:
            defaulted = True
            scope[f"_d{i}"] = default
            params.append(f"{name}=_d{i}")
        elif defaulted:
            raise TypeError(f"record {cls.__qualname__}: non-default field {name!r} follows a default")
        else:
            params.append(name)
        body.append(f"_set(self, {name!r}, {value})" if frozen else f"self.{name} = {value}")
    source = f"def __init__(self, {', '.join(params)}):\n    " + ("\n    ".join(body) or "pass") + "\n"
    exec(source, scope)
    init: Callable[..., None] = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def _values(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda self: (one(self),)
    return attrgetter(*names) if names else lambda self: ()


class _StandardView:
    """``__dataclass_fields__`` and ``__dataclass_params__``, built by dataclasses on first use."""

    def __init__(self, name: str, specs: list[tuple[str, Any]], frozen: bool) -> None:
        self.name, self.specs, self.frozen = name, specs, frozen

    def __get__(self, obj: Any, owner: type) -> Any:
        import dataclasses

        namespace: dict[str, Any] = {"__annotations__": owner.__annotations__, "__module__": owner.__module__,
                                     "__qualname__": owner.__qualname__}
        for name, default in self.specs:
            if isinstance(default, _Factory):
                namespace[name] = dataclasses.field(default_factory=default.make)
            elif default is not _NO_DEFAULT:
                namespace[name] = default
        twin: Any = dataclasses.dataclass(init=False, repr=False, eq=False, frozen=self.frozen)(
            type(owner.__name__, (), namespace))
        type.__setattr__(owner, "__dataclass_fields__", twin.__dataclass_fields__)
        type.__setattr__(owner, "__dataclass_params__", twin.__dataclass_params__)
        return vars(owner)[self.name]


def _repr(self: Any) -> str:
    fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._record_names)
    return f"{type(self).__qualname__}({fields})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        return self._record_values(self) == other._record_values(other)
    return NotImplemented


def _hash(self: Any) -> int:
    return hash(self._record_values(self))


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    from dataclasses import FrozenInstanceError

    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    from dataclasses import FrozenInstanceError

    raise FrozenInstanceError(f"cannot delete field {name!r}")
