"""Pipeline segment reordering by Monte Carlo tree search (paper §5.1), plus DFS and random search.

The searched object is a sequence of segment items (:class:`~dip.planner.problem.Item`); the item at
position ``i`` gets priority ``n - i``. A tree node at depth ``d`` fixes the first ``d`` positions.
With several interleaving configurations (:class:`~dip.planner.evaluate.TrackConfig`) the root first
chooses the configuration, so UCB also spends rollouts on the configurations that pay off.
To keep the tree useful, a node's children are the next ``window`` not yet placed items of a *base
sequence* (the best sequence known when the search starts): dependencies make far-away reorderings
pointless, and a micro-batch's items still move anywhere through repeated local choices.

* selection: descend through the child maximising ``s_v^alpha + beta * sqrt(ln N_x / N_v)``, where
  ``s_v`` is the best normalised score (``reference / makespan``, higher is better) seen below ``v``;
* expansion: add the next untried child;
* rollouts: complete the sequence ``rollouts_per_expansion`` times at random (each next item drawn
  uniformly from the first ``window`` remaining items of the base sequence), score each through
  interleaving + memory optimisation + simulation;
* back-propagation: the best rollout score updates the new node and its ancestors.

:class:`DFSSearch` enumerates the same tree depth first (children in base order, deepest
alternatives first) and :class:`RandomSearch` draws independent random sequences: the comparison
strategies of the paper's Fig. 11.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

Scorer = Callable[[np.ndarray], float]
DEFAULT_ALPHA = 8.0
DEFAULT_BETA = 0.05
DEFAULT_WINDOW = 3
DEFAULT_ROLLOUTS_PER_EXPANSION = 10


@dataclass
class Node:
    """A tree node: the item placed at this depth, visit count and best normalised score below it."""

    item: int
    depth: int
    parent: "Node | None" = None
    children: list["Node"] = field(default_factory=list)
    visits: int = 0
    best: float = 0.0
    virtual: int = 0
    full: bool = False
    config: int = 0

    def prefix(self) -> list[int]:
        out, node = [], self
        while node is not None and node.item >= 0:
            out.append(node.item)
            node = node.parent
        return out[::-1]


def candidates_after(base: np.ndarray, placed: set[int], window: int) -> list[int]:
    """The first ``window`` items of ``base`` not in ``placed``."""
    out = []
    for it in base:
        if int(it) not in placed:
            out.append(int(it))
            if len(out) == window:
                break
    return out


def random_completion(base: np.ndarray, prefix: list[int], window: int, rng: np.random.Generator) -> np.ndarray:
    """``prefix`` followed by the remaining items, each drawn from the first ``window`` remaining ones."""
    placed = set(prefix)
    remaining = [int(i) for i in base if int(i) not in placed]
    out = list(prefix)
    while remaining:
        k = int(rng.integers(min(window, len(remaining))))
        out.append(remaining.pop(k))
    return np.asarray(out, np.int64)


class MCTSSearch:
    """MCTS over item sequences (see module docstring). ``reference`` normalises makespans."""

    name = "mcts"

    def __init__(self, base: np.ndarray, reference: float, rng: np.random.Generator, alpha: float = DEFAULT_ALPHA,
                 beta: float = DEFAULT_BETA, window: int = DEFAULT_WINDOW,
                 rollouts_per_expansion: int = DEFAULT_ROLLOUTS_PER_EXPANSION, configs: int = 1):
        self.base = np.asarray(base, np.int64)
        self.n = len(self.base)
        self.reference = reference
        self.rng = rng
        self.alpha, self.beta, self.window = alpha, beta, window
        self.rollouts_per_expansion = rollouts_per_expansion
        self.configs = max(int(configs), 1)
        self.root = Node(-1, 0)
        if self.configs > 1:
            self.root.children = [Node(-2, 0, self.root, config=k) for k in range(self.configs)]
        self.exhausted = False

    def normalise(self, makespan: float) -> float:
        return self.reference / makespan if math.isfinite(makespan) and makespan > 0 else 0.0

    def ucb(self, parent: Node, child: Node) -> float:
        n = child.visits + child.virtual
        if n == 0:
            return math.inf
        total = max(parent.visits + parent.virtual, 1)
        return child.best ** self.alpha + self.beta * math.sqrt(math.log(total) / n)

    def _allowed(self, node: Node, prefix: list[int]) -> list[int]:
        return candidates_after(self.base, set(prefix), self.window)

    def select(self) -> tuple[Node, list[int]] | None:
        """Descend to a node with an untried child and expand it; None when the tree is exhausted."""
        node, prefix = self.root, []
        while True:
            allowed = [] if node is self.root and self.configs > 1 else self._allowed(node, prefix)
            tried = {c.item for c in node.children}
            untried = [i for i in allowed if i not in tried]
            if untried:
                child = Node(untried[0], node.depth + 1, node, config=node.config)
                child.full = child.depth >= self.n
                node.children.append(child)
                return child, prefix + [child.item]
            live = [c for c in node.children if not c.full]
            if not live:
                node.full = True
                if node is self.root:
                    self.exhausted = True
                    return None
                node, prefix = self.root, []
                continue
            node = max(live, key=lambda c: self.ucb(node, c))
            if node.item >= 0:
                prefix.append(node.item)

    def propose(self) -> tuple[Node, list[np.ndarray], int] | None:
        """One expansion, its rollout sequences (to be scored by the caller) and their configuration."""
        picked = self.select()
        if picked is None:
            return None
        node, prefix = picked
        k = 1 if node.depth >= self.n else self.rollouts_per_expansion
        node.virtual += 1
        return node, [random_completion(self.base, prefix, self.window, self.rng) for _ in range(k)], node.config

    def update(self, node: Node, makespans: list[float]) -> None:
        """Back-propagate the best of a node's rollout results."""
        node.virtual = max(node.virtual - 1, 0)
        score = max((self.normalise(m) for m in makespans), default=0.0)
        while node is not None:
            node.visits += 1
            node.best = max(node.best, score)
            node = node.parent


class DFSSearch:
    """Depth-first enumeration of the windowed tree: full sequences, last positions varied first."""

    name = "dfs"

    def __init__(self, base: np.ndarray, reference: float, rng: np.random.Generator, window: int = DEFAULT_WINDOW,
                 **_):
        self.base = np.asarray(base, np.int64)
        self.window = window
        self.exhausted = False
        self._stack: list[tuple[list[int], list[int]]] = [([], candidates_after(self.base, set(), window))]

    def propose(self) -> tuple[None, list[np.ndarray], int] | None:
        while self._stack:
            prefix, options = self._stack[-1]
            if not options:
                self._stack.pop()
                continue
            item = options.pop(0)
            seq = prefix + [item]
            placed = set(seq)
            nxt = candidates_after(self.base, placed, self.window)
            if not nxt:
                return None, [np.asarray(seq, np.int64)], 0
            self._stack.append((seq, nxt))
        self.exhausted = True
        return None

    def update(self, node, makespans) -> None:
        pass


class RandomSearch:
    """Independent random sequences: each position drawn from the first ``window`` remaining items."""

    name = "random"

    def __init__(self, base: np.ndarray, reference: float, rng: np.random.Generator, window: int = DEFAULT_WINDOW,
                 rollouts_per_expansion: int = DEFAULT_ROLLOUTS_PER_EXPANSION, **_):
        self.base = np.asarray(base, np.int64)
        self.rng = rng
        self.window = window
        self.k = rollouts_per_expansion
        self.exhausted = False

    def propose(self) -> tuple[None, list[np.ndarray], int]:
        return None, [random_completion(self.base, [], self.window, self.rng) for _ in range(self.k)], 0

    def update(self, node, makespans) -> None:
        pass


STRATEGIES = {"mcts": MCTSSearch, "dfs": DFSSearch, "random": RandomSearch}


class Portfolio:
    """Several searches (e.g. MCTS trees with different windows) taking turns; the caller sees one search."""

    def __init__(self, searches: list):
        self.searches = searches
        self.name = searches[0].name if searches else "mcts"
        self._turn = 0

    @property
    def exhausted(self) -> bool:
        return all(s.exhausted for s in self.searches)

    def propose(self):
        for _ in range(len(self.searches)):
            k = self._turn % len(self.searches)
            self._turn += 1
            search = self.searches[k]
            if search.exhausted:
                continue
            got = search.propose()
            if got is not None:
                node, seqs, config = got
                return (k, node), seqs, config
        return None

    def update(self, node, makespans) -> None:
        k, inner = node
        self.searches[k].update(inner, makespans)
