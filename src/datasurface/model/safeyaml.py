"""Read a model file's YAML with bounded time and memory, whatever the file holds.

PyYAML's safe loader never runs code, but it is not bounded: twelve kilobytes of anchors and aliases
describe a billion values (each alias repeats a whole subtree), an 8 MiB file of `[1,1,1,…]` alone makes
four million nodes (over 2 GB), and deep nesting exhausts the stack. The composer here counts every node
as it is built, an alias as the size of the subtree it repeats, and stops at the first limit crossed,
naming the line:

- at most MAX_NODES values, lists and mappings in the EXPANDED document (aliases and `<<` merge keys
  count as often as they are used), so whatever walks the data later is bounded too;
- at most MAX_DEPTH levels of nesting;
- at most MAX_SCALAR characters in one value;
- exactly one document; an alias inside the node it names (a recursive structure) is refused.

Aliases are kept (a store's `source` given once and reused is a fair use); only their expansion is
bounded. libyaml scans and parses when PyYAML has it; composing is always the Python code below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, ScalarEvent
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from datasurface.errors import ModelError

MAX_NODES = 200_000  # a model of ~30,000 columns; composing that many nodes takes ~150 MB
MAX_DEPTH = 32  # the model itself needs 8 (root, stores, store, datasets, dataset, columns, column, value)
MAX_SCALAR = 4096  # characters; names are at most 63, hosts 253


class _LimitError(yaml.MarkedYAMLError):
    """A bound of this module was crossed at `mark` (libyaml's or PyYAML's)."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(None, None, problem, mark)


class _BoundedComposer(Composer):
    """Composer that counts the nodes of the expanded document and the nesting depth as it goes."""

    def __init__(self) -> None:
        super().__init__()
        self._nodes = 0
        self._depth = 0
        self._sizes: dict[str, int] = {}  # anchor -> nodes of its subtree, once that is complete

    def _count(self, nodes: int, mark: Any) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise _LimitError(f"the model has more than {MAX_NODES} values, lists and mappings "
                              "(counting each alias as the values it repeats); refused to bound the job's "
                              "memory", mark)

    peek_event: Callable[[], Any]  # the parser's, mixed in beside this class

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            size = self._sizes.get(event.anchor or "")
            if size is None and event.anchor in self.anchors:
                raise _LimitError(f"alias *{event.anchor} is inside the node it names "
                                  "(a recursive structure)", event.start_mark)
            if size is not None:
                self._count(size, event.start_mark)
            return super().compose_node(parent, index)  # an undefined alias is PyYAML's error
        if self._depth >= MAX_DEPTH:
            raise _LimitError(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        if isinstance(event, ScalarEvent) and len(event.value) > MAX_SCALAR:
            raise _LimitError(f"a value of {len(event.value)} characters (at most {MAX_SCALAR})",
                              event.start_mark)
        before = self._nodes
        self._count(1, event.start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if event.anchor is not None:
            self._sizes[event.anchor] = self._nodes - before
        return node


class _PyLoader(_BoundedComposer, Reader, Scanner, Parser, Resolver):
    """PyYAML's own (pure Python) reader, scanner and parser under the bounded composer."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        _BoundedComposer.__init__(self)
        Resolver.__init__(self)


LOADERS: list[type[Any]] = [_PyLoader]
if getattr(yaml, "__with_libyaml__", False):
    from yaml._yaml import CParser

    class _CLoader(_BoundedComposer, CParser, Resolver):
        """libyaml's scanner and parser under the bounded (Python) composer: get_single_node and
        compose_node come from the composer, before CParser's own in the method order."""

        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            _BoundedComposer.__init__(self)
            Resolver.__init__(self)

    LOADERS.insert(0, _CLoader)


def compose(text: str, origin: str, loader: type[Any] | None = None) -> yaml.Node | None:
    """The node graph of the one document in `text` (None when empty); ModelError naming `origin` and
    the line for malformed YAML and for every bound crossed. `loader` (tests) picks an implementation."""
    parser = (loader or LOADERS[0])(text)
    try:
        node: yaml.Node | None = parser.get_single_node()
        return node
    except yaml.YAMLError as exc:
        raise _model_error(exc, origin) from None
    except RecursionError:  # not reached within MAX_DEPTH; kept so that no stack overflow escapes
        raise ModelError(f"{origin}: malformed YAML: nested too deeply") from None
    finally:
        parser.dispose()


def construct(node: yaml.Node, origin: str) -> Any:
    """Python data (dicts, lists, scalars) from a composed node graph, with the safe constructor only."""
    constructor = SafeConstructor()
    try:
        return constructor.construct_document(node)
    except yaml.YAMLError as exc:
        raise _model_error(exc, origin) from None


def _model_error(exc: yaml.YAMLError, origin: str) -> ModelError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(str(s) for s in (exc.context, exc.problem) if s)
        kind = "" if isinstance(exc, _LimitError) else "malformed YAML: "
        return ModelError(f"{origin}: {where}{kind}{what}")
    return ModelError(f"{origin}: malformed YAML: {' '.join(str(exc).split())}")
