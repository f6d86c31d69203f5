"""``record`` behaves as the standard ``dataclass`` decorator does, for every class that uses it."""
from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import pickle
import pkgutil
import subprocess
import sys
from dataclasses import field
from pathlib import Path

import pytest

import checks
import hostagent
from hostagent import records
from hostagent.records import field_names, is_record, record

REPO = Path(__file__).resolve().parents[2]


@record(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)


@record(frozen=True)
class Pair:
    a: int
    b: int = 0


@record
class Counter:
    name: str
    seen: int = 0
    log: list[str] = records.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class StdPoint:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)


def test_a_frozen_record_matches_the_standard_decorator() -> None:
    ours, theirs = Point(1, tags=("a",)), StdPoint(1, tags=("a",))
    assert repr(ours) == repr(theirs).replace("StdPoint", "Point")
    assert ours == Point(1, 0, ("a",), [])
    assert ours != Point(2)
    assert ours != theirs  # another class never compares equal, as with dataclasses
    assert (ours == (1, 0, ("a",), [])) is False
    assert len({Pair(1, 2), Pair(1, 2), Pair(2, 1), Pair(1)}) == 3
    for unhashable in (ours, theirs):  # a list field makes both unhashable alike
        with pytest.raises(TypeError, match="list"):
            hash(unhashable)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ours.x = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del ours.x  # type: ignore[misc]
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, z=2)  # type: ignore[call-arg]


def test_a_default_factory_gives_each_instance_its_own_value() -> None:
    a, b = Point(1), Point(1)
    a.notes.append("x")
    assert b.notes == [] and a.notes == ["x"]
    assert Point(1, notes=["given"]).notes == ["given"]


def test_the_dataclasses_functions_work_on_records() -> None:
    p = Point(1, 2, ("t",), ["n"])
    assert dataclasses.is_dataclass(p)
    assert [f.name for f in dataclasses.fields(p)] == ["x", "y", "tags", "notes"]
    assert dataclasses.asdict(p) == {"x": 1, "y": 2, "tags": ("t",), "notes": ["n"]}
    assert dataclasses.replace(p, y=7) == Point(1, 7, ("t",), ["n"])
    assert Point.__match_args__ == ("x", "y", "tags", "notes")
    assert pickle.loads(pickle.dumps(p)) == p
    assert copy.deepcopy(p) == p and copy.copy(p) == p


def test_a_mutable_record_is_comparable_and_unhashable() -> None:
    c = Counter("a")
    c.seen += 1
    assert c == Counter("a", 1)
    assert repr(c) == "Counter(name='a', seen=1, log=[])"
    assert Counter("b").log is not Counter("b").log
    with pytest.raises(TypeError):
        hash(c)


def test_the_records_helpers_read_and_copy_without_dataclasses() -> None:
    p = Point(1, 2)
    assert field_names(p) == field_names(Point) == ("x", "y", "tags", "notes")
    assert is_record(p) and is_record(Point) and not is_record(StdPoint(1)) and not is_record(3)
    assert records.replace(p, y=3) == Point(1, 3)
    with pytest.raises(TypeError):
        records.replace(p, z=3)


def test_a_check_runs_without_importing_dataclasses_or_inspect() -> None:
    """The plugin's start: dataclasses and inspect (with ast, dis, tokenize) cost a fifth of it."""
    script = (
        "import pathlib, sys\n"
        "from hostagent.cli import main\n"
        "codes = [main(['check', '--root', str(h)]) for h in sorted(pathlib.Path('examples/hosts').iterdir())]\n"
        "print(codes, sorted(m for m in ('dataclasses', 'inspect', 'ast') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=False)
    codes, imported = result.stdout.splitlines()[-1].rsplit(" ", 1)
    assert imported == "[]", result.stdout + result.stderr
    assert "2" in codes and "1" in codes and "0" in codes, codes  # real checks ran: OK, WARNING and CRITICAL hosts


def test_what_record_does_not_support_is_refused_not_mishandled() -> None:
    class Base:
        pass

    with pytest.raises(TypeError, match="inheritance"):
        @record
        class Child(Base):
            a: int

    with pytest.raises(TypeError, match="follows a default"):
        @record
        class Order:
            a: int = 0
            b: int  # type: ignore[misc]

    with pytest.raises(TypeError, match="field options"):
        @record
        class Hidden:
            a: int = field(default=0, repr=False)

    with pytest.raises(ValueError, match="mutable default"):
        @record
        class Shared:
            a: list[int] = []

    with pytest.raises(TypeError, match="post_init"):
        @record
        class Checked:
            a: int

            def __post_init__(self) -> None:
                pass


def _records() -> list[type]:
    found = []
    for package in (hostagent, checks):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            found += [v for v in vars(module).values()
                      if isinstance(v, type) and v.__module__ == info.name and "_record_values" in vars(v)]
    return found


def _standard_twin(cls: type) -> type:
    """The same class built by the standard decorator."""
    namespace: dict[str, object] = {"__annotations__": cls.__annotations__, "__module__": cls.__module__}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            namespace[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f.name] = field(default_factory=f.default_factory)
    frozen = "__setattr__" in vars(cls)
    return dataclasses.dataclass(frozen=frozen)(type(cls.__name__, (), namespace))


def _parameters(init: object) -> list[tuple[str, str]]:
    return [(p.name, repr(p.default)) for p in inspect.signature(init).parameters.values()]  # type: ignore[arg-type]


def test_every_record_in_the_code_takes_the_arguments_dataclass_would() -> None:
    records = _records()
    assert len(records) > 60
    for cls in records:
        twin = _standard_twin(cls)
        assert _parameters(cls.__init__) == _parameters(twin.__init__), cls  # type: ignore[misc]
        assert ("__hash__" in vars(twin) and vars(twin)["__hash__"] is not None) == \
               (vars(cls)["__hash__"] is not None), cls
