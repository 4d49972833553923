"""Read a policy from a file, from text, or from an already parsed mapping.

Reading and syntax problems become a `PolicyError` with one issue that names the file (and the
line and column when the parser knows them), so a caller handles one exception for everything
that can be wrong with a policy.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tollway.errors import PolicyError, PolicyIssue
from tollway.policy.fields import show
from tollway.policy.model import Policy
from tollway.policy.parse import build_policy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    import yaml

Format = Literal["toml", "yaml"]
SUFFIXES: dict[str, Format] = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}


def load(
    source: str | os.PathLike[str] | Mapping[str, Any], *, format: Format | None = None
) -> Policy:
    """The policy in a ``.toml``, ``.yaml`` or ``.yml`` file, or in an already parsed mapping.

    ``format`` overrides the file's suffix. Raises `PolicyError` listing every problem found.
    """
    if isinstance(source, Mapping):
        return build_policy(source)
    name = os.fspath(source)
    path = Path(name)
    chosen = format or SUFFIXES.get(path.suffix.lower())
    if chosen is None:
        raise _fail(
            name,
            f"cannot tell the format of {show(path.name)}; expected a .toml, .yaml or .yml "
            'file, or format="toml" or format="yaml"',
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(name, "no such file; expected a policy file") from None
    except UnicodeDecodeError as exc:
        raise _fail(name, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise _fail(name, f"cannot read the file: {exc.strerror or exc}") from None
    return loads(text, format=chosen, source=name)


def loads(text: str, format: Format = "toml", source: str | None = None) -> Policy:
    """The policy in TOML or YAML text; ``source`` names where it came from in error messages."""
    if format == "toml":
        document = _parse_toml(text, source)
    elif format == "yaml":
        document = _parse_yaml(text, source)
    else:
        raise _fail(source, f'format {show(format)} is unknown; expected "toml" or "yaml"')
    return build_policy(document, source=source)


def _fail(source: str | None, message: str) -> PolicyError:
    return PolicyError([PolicyIssue("", message, source)])


def _parse_toml(text: str, source: str | None) -> object:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line L, column C)"
        raise _fail(source, f"invalid TOML: {exc}") from None


def _parse_yaml(text: str, source: str | None) -> object:
    try:
        import yaml
    except ImportError:
        raise _fail(source, "reading YAML needs PyYAML: pip install 'tollway[yaml]'") from None
    try:
        document = yaml.load(text, Loader=_unique_key_loader())  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (at line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise _fail(source, f"invalid YAML: {exc.problem or exc.context}{where}") from None
    except yaml.YAMLError as exc:
        raise _fail(source, f"invalid YAML: {exc}") from None
    return {} if document is None else document  # an empty file is an empty policy


@functools.cache
def _unique_key_loader() -> type[yaml.SafeLoader]:
    """A `yaml.SafeLoader` that refuses a repeated key instead of keeping the last one.

    TOML refuses repeated keys; without this a YAML policy with two ``limits:`` would silently
    lose the first list.
    """
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[object] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    repeated = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base constructor reports it
                    continue
                if repeated:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found the key {show(key)} twice; expected each key once",
                        key_node.start_mark,
                    )
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader
