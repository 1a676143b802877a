"""Repository patterns indexed for matching: every pattern that matches a name, found without
testing the patterns one by one.

Patterns are grouped by their first path component when it is literal (`platform/**`), so a
name meets only the patterns of its own first component; the rest (`**/cache`, `*/tools`,
`ci-*/**`) form one floating group that every name meets. Each group is compiled into a trie
over path components when a name first needs it (a large policy has tens of thousands of
groups, most of which a given gateway never meets): a literal component is a dictionary
lookup, `*` is one edge, a component of text and `*` (`api-*`, `*-cache`) is found through its
literal prefix or suffix, and `**` is a node that may absorb any number of components. A name
is matched by walking its components with the set of nodes it may be in (an automaton: `**`
never backtracks), so the cost grows with the name's length and the patterns that do match,
not with how many patterns the policy holds.

Semantics are those of `patterns.compile_pattern` on valid repository names: `*` matches within
one component, `**` zero or more whole components.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
V = TypeVar("V")


class _Globs:
    """The children of one node reached through components such as `api-*` or `*-cache`,
    found by the component's literal prefix, else its literal suffix, else by trying each."""

    __slots__ = ("nodes", "other", "prefix_stems", "prefixes", "suffix_stems", "suffixes")

    def __init__(self) -> None:
        self.nodes: dict[str, _Node] = {}
        self.prefixes: dict[str, list[tuple[re.Pattern[str], _Node]]] = {}
        self.suffixes: dict[str, list[tuple[re.Pattern[str], _Node]]] = {}
        self.prefix_stems: frozenset[str] = frozenset()
        self.suffix_stems: frozenset[str] = frozenset()
        self.other: list[tuple[re.Pattern[str], _Node]] = []

    def child(self, component: str) -> _Node:
        """The child reached through `component`, made on first use."""
        node = self.nodes.get(component)
        if node is None:
            node = self.nodes[component] = _Node()
            self._file(component, node)
        return node

    def _file(self, component: str, node: _Node) -> None:
        matcher = re.compile(".*".join(re.escape(piece) for piece in component.split("*")))
        head, _, _ = component.partition("*")
        tail = component.rpartition("*")[2]
        if head:
            self.prefixes.setdefault(head, []).append((matcher, node))
        elif tail:
            self.suffixes.setdefault(tail, []).append((matcher, node))
        else:
            self.other.append((matcher, node))

    def seal(self) -> None:
        self.prefix_stems = frozenset(p[:k] for p in self.prefixes for k in range(1, len(p) + 1))
        self.suffix_stems = frozenset(s[-k:] for s in self.suffixes for k in range(1, len(s) + 1))

    def matches_any(self, component: str) -> bool:
        """Whether any child's component matches `component`."""
        found: list[_Node] = []
        self.children(component, found)
        return bool(found)

    def children(self, component: str, out: list[_Node]) -> None:
        """Enter the children whose component matches `component` (see `_Node.enter`)."""
        stems, prefixes = self.prefix_stems, self.prefixes
        k = 1
        while k <= len(component) and component[:k] in stems:
            for matcher, node in prefixes.get(component[:k], ()):
                if matcher.fullmatch(component):
                    node.enter(out)
            k += 1
        stems, suffixes = self.suffix_stems, self.suffixes
        k = 1
        while k <= len(component) and component[-k:] in stems:
            for matcher, node in suffixes.get(component[-k:], ()):
                if matcher.fullmatch(component):
                    node.enter(out)
            k += 1
        for matcher, node in self.other:
            if matcher.fullmatch(component):
                node.enter(out)


class _Node:
    """One state of the trie: where a name may be after some of its components.

    Nothing in a trie or an automaton refers back to where it is reached from, so that
    reference counting frees an index as soon as its engine is dropped: the live policy is
    frozen out of the cyclic collector's reach (`gateway.collector`), and a cycle in what it
    held would never be freed."""

    __slots__ = ("also", "globs", "items", "literal", "loop", "rest", "star", "value")

    def __init__(self, loop: bool = False) -> None:
        self.literal: dict[str, _Node] | None = None
        self.star: _Node | None = None
        self.globs: _Globs | None = None
        self.rest: _Node | None = None  # the `**` child, entered without consuming anything
        self.loop = loop  # this node is a `**`: it absorbs any component
        self.items: list[object] | None = None  # what the patterns ending here carry
        self.value: object | None = None
        self.also: tuple[_Node, ...] = ()  # entered with this node: its `**` child

    def enter(self, out: list[_Node]) -> None:
        """Add this node, and what is entered with it without consuming a component."""
        out.append(self)
        if self.also:
            out.extend(self.also)

    def insert(self, components: Sequence[str], item: object) -> None:
        node = self
        for component in components:
            if component == "**":
                if node.rest is None:
                    node.rest = _Node(loop=True)
                node = node.rest
            elif component == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            elif "*" in component:
                if node.globs is None:
                    node.globs = _Globs()
                node = node.globs.child(component)
            else:
                if node.literal is None:
                    node.literal = {}
                child = node.literal.get(component)
                if child is None:
                    child = node.literal[component] = _Node()
                node = child
        if node.items is None:
            node.items = []
        node.items.append(item)

    def seal(self, value: Callable[[list[object]], object]) -> None:
        """Compute values, and what each node is entered with, once every pattern is inserted."""
        stack = [self]
        while stack:
            node = stack.pop()
            if node.items is not None:
                node.value = value(node.items)
                node.items = None
            if node.rest is not None:
                node.also = (node.rest,)
                stack.append(node.rest)
            if node.star is not None:
                stack.append(node.star)
            if node.literal is not None:
                stack.extend(node.literal.values())
            if node.globs is not None:
                node.globs.seal()
                stack.extend(node.globs.nodes.values())


def _step(nodes: Iterable[_Node], component: str) -> frozenset[_Node]:
    """The nodes a name may be in after one more component (the automaton's transition)."""
    following: list[_Node] = []
    for node in nodes:
        if node.loop:
            following.append(node)
        literal = node.literal
        if literal is not None:
            child = literal.get(component)
            if child is not None:
                child.enter(following)
        if node.star is not None:
            node.star.enter(following)
        if node.globs is not None:
            node.globs.children(component, following)
    return frozenset(following)


def _entered(node: _Node) -> frozenset[_Node]:
    """The nodes a name is in when it enters `node`."""
    out: list[_Node] = []
    node.enter(out)
    return frozenset(out)


class _State:
    """A set of trie nodes a name may be in, with its transitions as names meet them: one
    lookup per component once met. `value` merges the values of the patterns ending here.

    A transition is the set of nodes it leads to, the key of the next state in its
    automaton, never the state itself: a state's transitions often lead back to it (`**`),
    and a cycle would outlive the engine (see `_Node`)."""

    __slots__ = ("default", "globs", "literals", "next", "nodes", "value")

    def __init__(self, nodes: frozenset[_Node], value: object | None) -> None:
        self.nodes = nodes
        self.value = value
        self.next: dict[str, frozenset[_Node]] = {}  # by component, as met
        self.default: frozenset[_Node] | None = None  # after a component no literal or glob names
        self.literals = frozenset(k for n in nodes if n.literal is not None for k in n.literal)
        self.globs = tuple(n.globs for n in nodes if n.globs is not None)


class _Automaton:
    """The states of one group's trie, made as names need them (a lazily built DFA).

    Memory is bounded whatever names are asked: at most `STATES` states and `budget`
    remembered transitions, beyond which it starts afresh. The floating group, which every
    name meets, remembers every component it met (a registry's namespaces); a group under a
    first component remembers only components that are literal or match a glob there (others
    share one transition), and at most twice its patterns plus 16 of them."""

    __slots__ = ("budget", "every", "merge", "remembered", "root", "start", "states")

    def __init__(
        self, root: _Node, merge: Callable[[list[object]], object], budget: int, every: bool
    ) -> None:
        self.root = root
        self.merge = merge
        self.budget = budget
        self.every = every  # remember every component's transition, not just special ones
        self.states: dict[frozenset[_Node], _State] = {}
        self.remembered = 0
        self.start = self.state(_entered(root))

    def reset(self) -> None:
        self.states = {}
        self.remembered = 0
        self.start = self.state(_entered(self.root))

    def state(self, nodes: frozenset[_Node]) -> _State:
        found = self.states.get(nodes)
        if found is None:
            if len(self.states) >= STATES:
                self.reset()
            values = [node.value for node in nodes if node.value is not None]
            value = None if not values else values[0] if len(values) == 1 else self.merge(values)
            found = self.states[nodes] = _State(nodes, value)
        return found

    def run(self, parts: list[str], start: int) -> object | None:
        """The merged value of every pattern matching `parts[start:]`, or None."""
        state = self.start
        for component in parts[start:] if start else parts:
            nodes = state.next.get(component)
            if nodes is None:
                special = component in state.literals or bool(
                    state.globs and any(globs.matches_any(component) for globs in state.globs)
                )
                # The next state's own key: a remembered transition costs a reference.
                if special:
                    nodes = self.state(_step(state.nodes, component)).nodes
                else:
                    nodes = state.default
                    if nodes is None:
                        nodes = state.default = self.state(_step(state.nodes, component)).nodes
                if special or self.every:
                    if self.remembered >= self.budget:
                        self.reset()
                    else:
                        state.next[component] = nodes
                        self.remembered += 1
            if not nodes:
                return None
            state = self.states.get(nodes) or self.state(nodes)
        return state.value


FLOATING = "*"  # the group key of patterns whose first component is not literal
ABSENT_MEMO_SIZE = 65_536
STATES = 4096  # per group
FLOATING_TRANSITIONS = 131_072  # the floating group: every namespace of a large registry


Groups = dict[str, list[tuple[str, T]]]


def group(rules: Iterable[tuple[Iterable[str], T]]) -> Groups[T]:
    """Items filed under each of their patterns, grouped by first component (`FLOATING` for
    patterns that start with a wildcard): what a `PatternIndex` is made of. A caller may keep
    the groups of an unchanged part of a policy (a file) and hand them to the next index."""
    groups: Groups[T] = {}
    for patterns, item in rules:
        for text in patterns:
            head = text.partition("/")[0]
            key = FLOATING if "*" in head else head
            found = groups.get(key)
            if found is None:
                groups[key] = [(text, item)]
            else:
                found.append((text, item))
    return groups


class PatternIndex(Generic[T, V]):
    """Items filed under repository patterns. `matching(name)` gives the values of the
    patterns that match `name`, where a pattern's value is `value(items filed under it)` and
    the values of several patterns are combined by `merge(values)`: at most two values, one
    for the patterns of the name's first component and one for the floating ones.

    Made of the `group`s of one or more parts of a policy. Immutable once built, apart from
    compiling each group into its trie on first use (idempotent: two threads compiling the
    same group build equal tries and one of them is kept)."""

    def __init__(
        self,
        parts: Iterable[Groups[T]],
        value: Callable[[list[T]], V],
        merge: Callable[[list[V]], V],
    ) -> None:
        self._parts = list(parts)
        self._value = value
        self._merge = merge
        self._compiled: dict[str, _Automaton] = {}
        self._floats = any(FLOATING in part for part in self._parts)
        self._floating: _Automaton | None = None  # compiled on first use
        # First components no pattern starts with, as names met them (bounded: any name may
        # be asked for); saves looking through every part again.
        self._absent: dict[str, None] = {}

    @classmethod
    def of(
        cls,
        rules: Iterable[tuple[Iterable[str], T]],
        value: Callable[[list[T]], V],
        merge: Callable[[list[V]], V],
    ) -> PatternIndex[T, V]:
        """An index of `rules`: (patterns, item) pairs."""
        return cls([group(rules)], value, merge)

    def __len__(self) -> int:
        """How many (pattern, item) pairs are filed."""
        return sum(len(entries) for part in self._parts for entries in part.values())

    def _automaton(self, key: str) -> _Automaton | None:
        automaton = self._compiled.get(key)
        if automaton is None:
            if key in self._absent:
                return None
            found = [entries for part in self._parts if (entries := part.get(key))]
            if not found:
                if len(self._absent) >= ABSENT_MEMO_SIZE:
                    self._absent.clear()
                self._absent[key] = None
                return None
            root = _Node()
            skip = 0 if key == FLOATING else 1
            patterns = 0
            for entries in found:
                patterns += len(entries)
                for text, item in entries:
                    root.insert(text.split("/")[skip:], item)
            root.seal(self._value)  # type: ignore[arg-type]
            if key == FLOATING:
                budget, every = FLOATING_TRANSITIONS, True
            else:
                budget, every = 2 * patterns + 16, False
            automaton = _Automaton(root, self._merge, budget, every)  # type: ignore[arg-type]
            self._compiled[key] = automaton
        return automaton

    def matching(self, name: str) -> list[V]:
        """The (merged) values of the patterns that match the repository `name`."""
        parts = name.split("/")
        out: list[V] = []
        anchored = self._automaton(parts[0])
        if anchored is not None:
            value = anchored.run(parts, 1)
            if value is not None:
                out.append(value)  # type: ignore[arg-type]
        floating = self._floating
        if floating is None and self._floats:
            floating = self._floating = self._automaton(FLOATING)
        if floating is not None:
            value = floating.run(parts, 0)
            if value is not None:
                out.append(value)  # type: ignore[arg-type]
        return out
