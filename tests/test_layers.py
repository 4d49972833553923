"""The house rules, read from the source with `ast`: imports only go down the layers, and no
module reads another class's underscored attributes.

The layers, low to high (CONTRIBUTING.md draws the same list)::

    base      errors, money, events         the words every layer shares
    policy    policy/                       the validated policy document
    engine    engine/                       pure, I/O-free decision logic
    stores    stores/                       the one place of counter I/O
    faces     client, reservation, usage,   what an application holds
              guard, keys, http/, asgi,
              wsgi, fastapi, testing
    features  outbound/, metering/,         built on the faces
              billing/
    top       cli/, demo/                   the command and the demos

A module may import its own layer and the ones below it. Every module of ``src/tollway`` is
mapped in `LAYER_OF` (a new one fails `test_every_module_has_a_layer` until it is placed).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "tollway"

LAYERS = ("base", "policy", "engine", "stores", "faces", "features", "top")
RANK = {name: rank for rank, name in enumerate(LAYERS)}

# A module's layer is the entry of its longest mapped prefix; a package entry covers the
# modules inside it (a new module in engine/ is engine's), a module entry covers only itself.
LAYER_OF = {
    "tollway.errors": "base",
    "tollway.money": "base",
    "tollway.events": "base",
    "tollway.drive": "base",
    "tollway.clock": "base",
    "tollway.keyspace": "base",
    "tollway.netrules": "base",
    "tollway.policy": "policy",
    "tollway.engine": "engine",
    "tollway.stores": "stores",
    "tollway": "faces",  # the package root: re-exports the faces
    "tollway.client": "faces",
    "tollway.reservation": "faces",
    "tollway.usage": "faces",
    "tollway.guard": "faces",
    "tollway.keys": "faces",
    "tollway.http": "faces",
    "tollway.asgi": "faces",
    "tollway.wsgi": "faces",
    "tollway.fastapi": "faces",
    "tollway.testing": "faces",
    "tollway.watch": "faces",
    "tollway.inline": "faces",
    "tollway.driver": "faces",
    "tollway.outbound": "features",
    "tollway.metering": "features",
    "tollway.billing": "features",
    "tollway.metrics": "features",
    "tollway.cli": "top",
    "tollway.__main__": "top",
    "tollway.demo": "top",
    "tollway.admin": "top",
}

# Packages whose modules take the package's layer (the others are single modules).
PACKAGES = {"tollway.policy", "tollway.engine", "tollway.stores", "tollway.http"}
PACKAGES |= {"tollway.outbound", "tollway.metering", "tollway.billing", "tollway.cli"}
PACKAGES |= {"tollway.demo", "tollway.admin", "tollway.metrics"}

# The only imports that go up: (importer, imported) -> why. Each is a type annotation or a
# face's convenience entry into a feature, imported lazily where it is used; a new entry
# needs a reason as good as these.
ALLOWED: dict[tuple[str, str], str] = {
    ("tollway.errors", "tollway.engine.decision"): (
        "TYPE_CHECKING only: LimitExceeded.decision is annotated with Decision"
    ),
    ("tollway.errors", "tollway.outbound.routing"): (
        "TYPE_CHECKING only: NoProviderAvailable.skipped is annotated with Skip"
    ),
    ("tollway.errors", "tollway.outbound.signals"): (
        "TYPE_CHECKING only: ProviderCallError.signal is annotated with Signal"
    ),
    ("tollway.client", "tollway.outbound.router"): (
        "Tollway.route / AsyncTollway.route: a face convenience constructor that lazily builds "
        "the feature object (may stay)"
    ),
    ("tollway.client", "tollway.metering.embedded"): (
        "the client starts the embedded drain itself (memory store with events)"
    ),
    ("tollway.client", "tollway.metering.ledger"): "Tollway.ledger opens the policy's ledger",
    ("tollway.client", "tollway.metering.recorder"): "Tollway.record builds a Recorder",
    ("tollway.client", "tollway.billing.facade"): (
        "Tollway.billing / AsyncTollway.billing: lazily built, and assign goes through it "
        "when the policy has [billing]"
    ),
    ("tollway.client", "tollway.billing.records"): (
        "TYPE_CHECKING only: assign's proration is annotated with Proration"
    ),
}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name, or None when the map does not place it."""
    if module in LAYER_OF:
        return LAYER_OF[module]
    parts = module.split(".")
    for end in range(len(parts) - 1, 1, -1):
        prefix = ".".join(parts[:end])
        if prefix in PACKAGES:
            return LAYER_OF[prefix]
    return None


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(src: Path = SRC) -> dict[str, Path]:
    return {module_name(path, src): path for path in sorted((src / "tollway").rglob("*.py"))}


# --------------------------------------------------------------------------- imports


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def imports_of(module: str, source: str, known: Iterable[str], is_package: bool) -> list[Import]:
    """Every tollway import of a module: at module level, in functions, under TYPE_CHECKING
    (`ast.walk` visits them all). ``from tollway.x import y`` names ``tollway.x.y`` when that
    is a module, else ``tollway.x``."""
    names = set(known)
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                targets.append(candidate if candidate in names else base)
        for target in targets:
            if target == "tollway" or target.startswith("tollway."):
                found.append(Import(module, target, node.lineno))  # type: ignore[attr-defined]
    return sorted(set(found), key=lambda imp: (imp.line, imp.imported))


def layer_violations(
    sources: dict[str, tuple[str, bool]], allowed: Iterable[tuple[str, str]] = ()
) -> list[str]:
    """``importer -> imported`` for each import from a lower layer into a higher one.
    ``sources`` maps a module name to (its source, whether it is a package)."""
    skip = set(allowed)
    found: list[str] = []
    for module, (source, is_package) in sorted(sources.items()):
        low = layer_of(module)
        for imp in imports_of(module, source, sources, is_package):
            high = layer_of(imp.imported)
            if low is None or high is None or (imp.importer, imp.imported) in skip:
                continue
            if RANK[high] > RANK[low]:
                found.append(
                    f"{imp.importer} ({low}) imports {imp.imported} ({high}) at line {imp.line}"
                )
    return found


def read_sources(src: Path = SRC) -> dict[str, tuple[str, bool]]:
    return {
        name: (path.read_text(encoding="utf-8"), path.name == "__init__.py")
        for name, path in modules(src).items()
    }


def test_every_module_has_a_layer() -> None:
    unplaced = [name for name in modules() if layer_of(name) is None]
    assert unplaced == [], f"place these modules in LAYER_OF: {unplaced}"


def test_imports_only_go_down() -> None:
    assert layer_violations(read_sources(), ALLOWED) == []


def test_allowed_imports_still_exist() -> None:
    """An entry of `ALLOWED` whose import is gone must leave the set (it only shrinks)."""
    sources = read_sources()
    present = {
        (imp.importer, imp.imported)
        for module, (source, is_package) in sources.items()
        for imp in imports_of(module, source, sources, is_package)
    }
    assert sorted(set(ALLOWED) - present) == []


def test_layer_check_reports_an_upward_import() -> None:
    sources = {
        "tollway.engine": ("", True),
        "tollway.engine.bad": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from tollway.client import Tollway\n"
            "def later():\n"
            "    import tollway.metering.entries\n"
            "    from ..stores import memory\n"
            "from tollway.errors import TollwayError\n",
            False,
        ),
        "tollway.client": ("", False),
        "tollway.errors": ("", False),
        "tollway.stores": ("", True),
        "tollway.stores.memory": ("", False),
        "tollway.metering": ("", True),
        "tollway.metering.entries": ("", False),
    }
    found = layer_violations(sources)
    assert found == [
        "tollway.engine.bad (engine) imports tollway.client (faces) at line 3",
        "tollway.engine.bad (engine) imports tollway.metering.entries (features) at line 5",
        "tollway.engine.bad (engine) imports tollway.stores.memory (stores) at line 6",
    ]
    allowed = {("tollway.engine.bad", "tollway.client")}
    assert len(layer_violations(sources, allowed)) == 2


def test_layer_map_places_new_modules() -> None:
    assert layer_of("tollway.engine.new_part") == "engine"
    assert layer_of("tollway.demo.metering") == "top"
    assert layer_of("tollway.new_root_module") is None
    assert layer_of("tollway.client_helpers") is None


# --------------------------------------------------------------------------- private reads

# The few places a module sets private fields of an object it is building: (file, attribute)
# -> why. Nothing else may touch another object's underscored attributes.
KNOWN_PRIVATE_READS: dict[tuple[str, str], str] = {
    ("tollway/engine/rules.py", "_window"): "Rule.gate builds a Rule and sets its own fields",
    ("tollway/engine/rules.py", "_marks"): "Rule.gate builds a Rule and sets its own fields",
}

# Underscored names that are public API of what they are read on, not private state.
PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}
"""The namedtuple API (underscored so it cannot clash with a field): urlsplit()._replace."""
STDLIB_PRIVATE = {("argparse", "_SubParsersAction")}
"""The stdlib types that exist only under an underscored name (the type of add_subparsers)."""


def _is_name(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_reads(source: str) -> Iterator[tuple[str, int]]:
    """(attribute, line) of each ``x._name`` on anything but ``self``, ``cls`` or ``super()``
    (a class's other instances included: what a class needs of its kind, it makes public)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        if node.attr in PUBLIC_UNDERSCORED:
            continue
        if isinstance(owner, ast.Name) and (owner.id, node.attr) in STDLIB_PRIVATE:
            continue
        if isinstance(owner, ast.Call) and _is_name(owner.func, "super"):
            continue
        yield node.attr, node.lineno


def private_violations(sources: dict[str, str], known: Iterable[tuple[str, str]] = ()) -> list[str]:
    """``file:line reads .attr`` for each read not in ``known`` ((file, attribute) pairs)."""
    skip = set(known)
    return [
        f"{file}:{line} reads .{attr}"
        for file, source in sorted(sources.items())
        for attr, line in sorted(private_reads(source), key=lambda read: read[1])
        if (file, attr) not in skip
    ]


def file_sources(src: Path = SRC) -> dict[str, str]:
    return {
        str(path.relative_to(src)): path.read_text(encoding="utf-8")
        for path in sorted((src / "tollway").rglob("*.py"))
    }


def test_no_module_reads_another_class_private_state() -> None:
    assert private_violations(file_sources(), KNOWN_PRIVATE_READS) == []


def test_known_private_reads_still_exist() -> None:
    """An entry of `KNOWN_PRIVATE_READS` that no longer happens must leave the set."""
    present = {
        (file, attr) for file, source in file_sources().items() for attr, _ in private_reads(source)
    }
    assert sorted(set(KNOWN_PRIVATE_READS) - present) == []


def test_private_check_reports_a_foreign_read() -> None:
    source = (
        "class Mine:\n"
        "    def __init__(self):\n"
        "        self._count = 0\n"
        "    def _bump(self):\n"
        "        return self._count + 1\n"
        "    def same(self, other: 'Mine'):\n"
        "        return other._count + other._bump()\n"
        "class Child(Mine):\n"
        "    def go(self):\n"
        "        return super()._bump()\n"
        "def peek(client):\n"
        "    return client._take() + client.__class__.__name__.__len__()\n"
        "def deep(decision):\n"
        "    return decision._step.event\n"
        "def fine(url, argparse):\n"
        "    return url._replace(path='/'), argparse._SubParsersAction\n"
    )
    assert private_violations({"tollway/x.py": source}) == [
        "tollway/x.py:7 reads ._count",
        "tollway/x.py:7 reads ._bump",
        "tollway/x.py:12 reads ._take",
        "tollway/x.py:14 reads ._step",
    ]
    known = {("tollway/x.py", "_take"), ("tollway/x.py", "_count"), ("tollway/x.py", "_bump")}
    assert private_violations({"tollway/x.py": source}, known) == ["tollway/x.py:14 reads ._step"]
