"""Pipeline segment reordering by Monte Carlo tree search (paper §5.1), plus DFS and random search.

The searched object is a sequence of segment items (:class:`~dip.planner.problem.Item`); the item at
position ``i`` gets priority ``n - i``. A tree node at depth ``d`` fixes the first ``d`` positions.
With several interleaving configurations (:class:`~dip.planner.evaluate.TrackConfig`) the root first
chooses the configuration, so UCB also spends rollouts on the configurations that pay off.
To keep the tree useful, a node's children are the next ``window`` not yet placed items of a *base
sequence* (the best sequence known when the search starts): dependencies make far-away reorderings
pointless, and a micro-batch's items still move anywhere through repeated local choices.

* selection: descend through the child maximising ``s_v^alpha + beta * sqrt(ln N_x / N_v)``, where
  ``s_v`` is the best makespan seen below ``v`` normalised to ``[0, 1]`` between the reference (the
  base's makespan: 0) and the best makespan the whole search has seen (1), so the exploitation term
  spans its full range whatever the size of the improvements;
* expansion: add the next untried child;
* rollouts: complete the sequence ``rollouts_per_expansion`` times, guided by the incumbent (the best
  sequence found so far, initially the base): the remaining items follow the incumbent's order, and
  each position deviates with probability ``epsilon`` to another of the first ``window`` remaining
  items (the first rollout of an expansion does not deviate: it scores the new prefix alone);
* back-propagation: the best rollout makespan updates the new node and its ancestors, and the best
  rollout becomes the incumbent (one per configuration) when it beats it.

Only orders that can change the interleaver's output are searched: a configuration that never reads
some items' priorities (:func:`~dip.planner.evaluate.active_items`, e.g. the backwards when they go
critical path first) searches the order of the others only (:func:`split_active`), and a rollout
already proposed is redrawn (up to ``RETRIES`` times) instead of being scored again.

The paper completes rollouts uniformly at random, which on sequences of hundreds of items leaves the
tree's few fixed positions lost in the noise of the random tail (such an MCTS is no better than
random search); the guided completion keeps the statistics of a prefix meaningful and reuses what the
search has learnt. :class:`DFSSearch` enumerates the same tree depth first (children in base order,
deepest alternatives first) and :class:`RandomSearch` draws independent uniform completions of the
base, over the same items: the comparison strategies of the paper's Fig. 11.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "DEFAULT_EPSILON",
    "DEFAULT_ROLLOUTS_PER_EXPANSION",
    "DEFAULT_WINDOW",
    "RETRIES",
    "RETRY_EPSILON",
    "STRATEGIES",
    "DFSSearch",
    "MCTSSearch",
    "Node",
    "Portfolio",
    "RandomSearch",
    "Scorer",
    "candidates_after",
    "guided_completion",
    "random_completion",
    "split_active",
]

Scorer = Callable[[np.ndarray], float]
DEFAULT_ALPHA = 2.0
DEFAULT_BETA = 0.2
DEFAULT_WINDOW = 3
DEFAULT_ROLLOUTS_PER_EXPANSION = 10
DEFAULT_EPSILON = 0.1
RETRIES = 3
RETRY_EPSILON = 0.3  # deviation rate of the retries that avoid a repeated rollout


@dataclass
class Node:
    """A tree node: the item placed at this depth, visit count and best makespan seen below it."""

    item: int
    depth: int
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    best: float = math.inf
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
    return guided_completion(base, prefix, window, 1.0, rng)


def guided_completion(
    order: np.ndarray, prefix: list[int], window: int, epsilon: float, rng: np.random.Generator
) -> np.ndarray:
    """``prefix`` followed by the remaining items in ``order``; with probability ``epsilon`` a position
    takes one of the first ``window`` remaining items uniformly instead of the first."""
    placed = set(prefix)
    remaining = [int(i) for i in order if int(i) not in placed]
    out = list(prefix)
    while remaining:
        k = 0
        if epsilon > 0 and (epsilon >= 1 or rng.random() < epsilon):
            k = int(rng.integers(min(window, len(remaining))))
        out.append(remaining.pop(k))
    return np.asarray(out, np.int64)


def split_active(base: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``base`` split into the items a configuration's priorities read (``mask``, None: all) and the
    others; a searched sequence is an order of the former followed by the latter in base order."""
    keep = np.ones(len(base), bool) if mask is None else np.asarray(mask, bool)[base]
    return base[keep], base[~keep]


class MCTSSearch:
    """MCTS over item sequences (see module docstring). ``reference``: the base sequence's makespan."""

    name = "mcts"

    def __init__(
        self,
        base: np.ndarray,
        reference: float,
        rng: np.random.Generator,
        alpha: float = DEFAULT_ALPHA,
        beta: float = DEFAULT_BETA,
        window: int = DEFAULT_WINDOW,
        rollouts_per_expansion: int = DEFAULT_ROLLOUTS_PER_EXPANSION,
        configs: int = 1,
        epsilon: float = DEFAULT_EPSILON,
        active: list[np.ndarray | None] | None = None,
    ):
        self.base = np.asarray(base, np.int64)
        self.n = len(self.base)
        self.reference = reference
        self.rng = rng
        self.alpha, self.beta, self.window, self.epsilon = alpha, beta, window, epsilon
        self.rollouts_per_expansion = rollouts_per_expansion
        self.configs = max(int(configs), 1)
        self.root = Node(-1, 0)
        if self.configs > 1:
            self.root.children = [Node(-2, 0, self.root, config=k) for k in range(self.configs)]
        self.exhausted = False
        masks = list(active or []) + [None] * self.configs
        # per configuration: the items it searches, and the others (see split_active)
        self.trees, self.idle = map(list, zip(*(split_active(self.base, m) for m in masks[: self.configs])))
        start = reference if math.isfinite(reference) else math.inf
        self.incumbents = [(np.concatenate([t, i]), start) for t, i in zip(self.trees, self.idle)]
        self._seen = {(k, seq.tobytes()) for k, (seq, _) in enumerate(self.incumbents)}  # scored already

    def normalise(self, makespan: float) -> float:
        """``makespan`` on ``[0, 1]``: 0 at (or above) the reference, 1 at the best makespan seen."""
        if not math.isfinite(makespan):
            return 0.0
        ref = self.reference if math.isfinite(self.reference) else makespan
        span = ref - min(self.root.best, ref)
        if span <= 1e-12 * max(abs(ref), 1.0):
            return 1.0 if makespan <= ref else 0.0
        return min(max((ref - makespan) / span, 0.0), 1.0)

    def ucb(self, parent: Node, child: Node) -> float:
        n = child.visits + child.virtual
        if n == 0:
            return math.inf
        total = max(parent.visits + parent.virtual, 1)
        return self.normalise(child.best) ** self.alpha + self.beta * math.sqrt(math.log(total) / n)

    def _allowed(self, node: Node, prefix: list[int]) -> list[int]:
        return candidates_after(self.trees[node.config], set(prefix), self.window)

    def _complete(self, config: int, prefix: list[int], epsilon: float) -> np.ndarray:
        """A guided completion of ``prefix`` under ``config``, the inactive items appended in base order."""
        order = self.incumbents[config][0][: len(self.trees[config])]
        seq = guided_completion(order, prefix, self.window, epsilon, self.rng)
        return np.concatenate([seq, self.idle[config]]) if len(self.idle[config]) else seq

    def select(self) -> tuple[Node, list[int]] | None:
        """Descend to a node with an untried child and expand it; None when the tree is exhausted."""
        node, prefix = self.root, []
        while True:
            allowed = [] if node is self.root and self.configs > 1 else self._allowed(node, prefix)
            tried = {c.item for c in node.children}
            untried = [i for i in allowed if i not in tried]
            if untried:
                child = Node(untried[0], node.depth + 1, node, config=node.config)
                child.full = child.depth >= len(self.trees[node.config])
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
        k = 1 if node.depth >= len(self.trees[node.config]) else self.rollouts_per_expansion
        node.virtual += 1
        seqs = [self._fresh(prefix, self.epsilon if j else 0.0, node.config) for j in range(k)]
        return node, seqs, node.config

    @property
    def incumbent(self) -> np.ndarray:
        """The best sequence found so far over all configurations."""
        return min(self.incumbents, key=lambda x: x[1])[0]

    def _fresh(self, prefix: list[int], epsilon: float, config: int) -> np.ndarray:
        """A guided completion not proposed before (a few retries with deviations), else a repeat."""
        seq = self._complete(config, prefix, epsilon)
        for _ in range(RETRIES):
            if (config, seq.tobytes()) not in self._seen:
                break
            seq = self._complete(config, prefix, max(self.epsilon, RETRY_EPSILON))
        self._seen.add((config, seq.tobytes()))
        return seq

    def update(self, node: Node, makespans: list[float], seqs: list[np.ndarray] | None = None) -> None:
        """Back-propagate the best of a node's rollout makespans; a better rollout becomes the incumbent."""
        node.virtual = max(node.virtual - 1, 0)
        best = min((m for m in makespans if math.isfinite(m)), default=math.inf)
        if seqs is not None and best < self.incumbents[node.config][1]:
            self.incumbents[node.config] = (np.asarray(seqs[list(makespans).index(best)], np.int64), best)
        while node is not None:
            node.visits += 1
            node.best = min(node.best, best)
            node = node.parent


class DFSSearch:
    """Depth-first enumeration of the windowed tree: full sequences, last positions varied first."""

    name = "dfs"

    def __init__(
        self,
        base: np.ndarray,
        reference: float,
        rng: np.random.Generator,
        window: int = DEFAULT_WINDOW,
        active: list[np.ndarray | None] | None = None,
        **_,
    ):
        self.base, self.idle = split_active(np.asarray(base, np.int64), (active or [None])[0])
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
                return None, [np.concatenate([np.asarray(seq, np.int64), self.idle])], 0
            self._stack.append((seq, nxt))
        self.exhausted = True
        return None

    def update(self, node, makespans, seqs=None) -> None:
        pass


class RandomSearch:
    """Independent random sequences: each position drawn from the first ``window`` remaining items."""

    name = "random"

    def __init__(
        self,
        base: np.ndarray,
        reference: float,
        rng: np.random.Generator,
        window: int = DEFAULT_WINDOW,
        rollouts_per_expansion: int = DEFAULT_ROLLOUTS_PER_EXPANSION,
        active: list[np.ndarray | None] | None = None,
        **_,
    ):
        self.base, self.idle = split_active(np.asarray(base, np.int64), (active or [None])[0])
        self.rng = rng
        self.window = window
        self.k = rollouts_per_expansion
        self.exhausted = False

    def propose(self) -> tuple[None, list[np.ndarray], int]:
        seqs = [random_completion(self.base, [], self.window, self.rng) for _ in range(self.k)]
        return None, [np.concatenate([q, self.idle]) for q in seqs], 0

    def update(self, node, makespans, seqs=None) -> None:
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

    def update(self, node, makespans, seqs=None) -> None:
        k, inner = node
        self.searches[k].update(inner, makespans, seqs)
