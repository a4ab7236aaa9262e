"""MCTS segment reordering: UCB selection, expansion, back-propagation; DFS and random search."""
from __future__ import annotations

import math

import numpy as np

from dip.planner.mcts import DFSSearch, MCTSSearch, Node, RandomSearch, candidates_after, random_completion


def search(n=5, window=2, configs=1, k=3):
    return MCTSSearch(np.arange(n), reference=10.0, rng=np.random.default_rng(0), alpha=2.0, beta=0.5,
                      window=window, rollouts_per_expansion=k, configs=configs)


def test_ucb_prefers_unvisited_then_score_plus_exploration():
    s = search()
    parent = Node(-1, 0, visits=10)
    fresh, good, bad = Node(0, 1, parent), Node(1, 1, parent, visits=5, best=0.9), Node(2, 1, parent, visits=5, best=0.5)
    assert s.ucb(parent, fresh) == math.inf
    expected = 0.9 ** 2 + 0.5 * math.sqrt(math.log(10) / 5)
    assert math.isclose(s.ucb(parent, good), expected)
    assert s.ucb(parent, good) > s.ucb(parent, bad)
    rarely = Node(3, 1, parent, visits=1, best=0.5)
    assert s.ucb(parent, rarely) > s.ucb(parent, bad)  # fewer visits, more exploration bonus


def test_expansion_follows_the_window_and_rollouts_are_permutations():
    s = search(n=5, window=2)
    node, seqs, config = s.propose()
    assert node.item == 0 and node.depth == 1 and config == 0
    assert len(seqs) == 3
    for seq in seqs:
        assert sorted(seq.tolist()) == list(range(5)) and seq[0] == 0
    s.update(node, [10.0, 12.0, 20.0])
    node2, _, _ = s.propose()
    assert node2.item == 1 and node2.parent is s.root  # root's second window child is expanded next


def test_backpropagation_keeps_the_best_normalised_score():
    s = search(n=4)
    node, _, _ = s.propose()
    s.update(node, [20.0, 12.5, math.inf])
    assert node.visits == 1 and math.isclose(node.best, 10.0 / 12.5)
    assert s.root.visits == 1 and math.isclose(s.root.best, 0.8)
    child, _, _ = s.propose()
    s.update(child, [40.0])
    assert s.root.visits == 2 and math.isclose(s.root.best, 0.8)


def test_tree_is_exhausted_on_tiny_spaces():
    s = search(n=2, window=2, k=1)
    leaves = set()
    while True:
        got = s.propose()
        if got is None:
            break
        node, seqs, _ = got
        leaves.add(tuple(seqs[0].tolist()))
        s.update(node, [1.0])
    assert s.exhausted and leaves == {(0, 1), (1, 0)}


def test_configs_are_chosen_at_the_root():
    s = search(n=3, configs=2)
    seen = set()
    for _ in range(4):
        node, seqs, config = s.propose()
        seen.add(config)
        assert all(sorted(q.tolist()) == [0, 1, 2] for q in seqs)
        s.update(node, [10.0])
    assert seen == {0, 1}


def test_dfs_enumerates_windowed_sequences_and_random_draws_permutations():
    dfs = DFSSearch(np.arange(3), 1.0, np.random.default_rng(0), window=3)
    seqs = []
    while (got := dfs.propose()) is not None:
        seqs.append(tuple(got[1][0].tolist()))
    assert len(seqs) == 6 and len(set(seqs)) == 6
    rnd = RandomSearch(np.arange(6), 1.0, np.random.default_rng(1), window=2, rollouts_per_expansion=4)
    _, drawn, _ = rnd.propose()
    assert len(drawn) == 4 and all(sorted(q.tolist()) == list(range(6)) for q in drawn)


def test_window_helpers():
    base = np.array([4, 2, 0, 1, 3])
    assert candidates_after(base, {2}, 2) == [4, 0]
    seq = random_completion(base, [2], 1, np.random.default_rng(0))
    assert seq.tolist() == [2, 4, 0, 1, 3]  # window 1 keeps the base order
