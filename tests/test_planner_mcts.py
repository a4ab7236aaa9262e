"""MCTS segment reordering: UCB selection, expansion, back-propagation; DFS and random search."""

from __future__ import annotations

import math

import numpy as np

from dip.planner.mcts import (
    DFSSearch,
    MCTSSearch,
    Node,
    RandomSearch,
    candidates_after,
    guided_completion,
    random_completion,
)


def search(n=5, window=2, configs=1, k=3, epsilon=0.1):
    return MCTSSearch(
        np.arange(n),
        reference=10.0,
        rng=np.random.default_rng(0),
        alpha=2.0,
        beta=0.5,
        window=window,
        rollouts_per_expansion=k,
        configs=configs,
        epsilon=epsilon,
    )


def test_ucb_prefers_unvisited_then_score_plus_exploration():
    s = search()
    s.root.best = 8.0  # the best makespan seen: normalised scores run from 10 (0) to 8 (1)
    parent = Node(-1, 0, visits=10)
    fresh = Node(0, 1, parent)
    good, bad = Node(1, 1, parent, visits=5, best=8.2), Node(2, 1, parent, visits=5, best=9.0)
    assert s.ucb(parent, fresh) == math.inf
    expected = 0.9**2 + 0.5 * math.sqrt(math.log(10) / 5)
    assert math.isclose(s.ucb(parent, good), expected)
    assert s.ucb(parent, good) > s.ucb(parent, bad)
    rarely = Node(3, 1, parent, visits=1, best=9.0)
    assert s.ucb(parent, rarely) > s.ucb(parent, bad)  # fewer visits, more exploration bonus


def test_normalised_scores_span_reference_to_best_whatever_the_scale():
    small, large = search(), search()
    small.root.best, large.root.best = 9.99, 5.0
    assert math.isclose(small.normalise(9.995), 0.5) and math.isclose(large.normalise(7.5), 0.5)
    assert small.normalise(12.0) == 0.0 and small.normalise(math.inf) == 0.0 and small.normalise(9.99) == 1.0
    fresh = search()  # nothing better than the reference yet
    assert fresh.normalise(10.0) == 1.0 and fresh.normalise(10.5) == 0.0


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


def test_backpropagation_keeps_the_best_makespan():
    s = search(n=4)
    node, _, _ = s.propose()
    s.update(node, [20.0, 12.5, math.inf])
    assert node.visits == 1 and node.best == 12.5
    assert s.root.visits == 1 and s.root.best == 12.5
    child, _, _ = s.propose()
    s.update(child, [40.0])
    assert s.root.visits == 2 and s.root.best == 12.5


def test_a_better_rollout_becomes_the_incumbent_that_guides_later_rollouts():
    s = search(n=6, window=3, k=2, epsilon=0.0)
    node, seqs, _ = s.propose()
    assert all(sorted(q.tolist()) == list(range(6)) and q[0] == 0 for q in seqs)
    better = np.array([0, 2, 1, 3, 5, 4])
    s.update(node, [11.0, 9.0], [seqs[0], better])
    assert s.incumbent.tolist() == better.tolist() and s.incumbents[0][1] == 9.0
    s.update(node, [9.5], [np.arange(6)])  # not better: the incumbent stays
    assert s.incumbent.tolist() == better.tolist()
    node2, seqs2, _ = s.propose()
    rest = [i for i in better if i not in node2.prefix()]
    assert node2.prefix() == [1] and seqs2[0].tolist() == [1] + rest  # no deviation in the first rollout


def test_rollouts_are_not_repeated_when_an_alternative_exists():
    s = search(n=6, window=3, k=4, epsilon=0.0)
    seen = set()
    for _ in range(3):
        node, seqs, _ = s.propose()
        for q in seqs:
            assert sorted(q.tolist()) == list(range(6))
            seen.add(tuple(q.tolist()))
        s.update(node, [10.0] * len(seqs), seqs)
    assert len(seen) >= 10  # 12 rollouts without deviations would give 3 distinct sequences


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
    assert guided_completion(base, [0], 3, 0.0, np.random.default_rng(0)).tolist() == [0, 4, 2, 1, 3]
    rng = np.random.default_rng(5)
    moved = [guided_completion(base, [], 3, 0.5, rng).tolist() != base.tolist() for _ in range(50)]
    assert 0 < sum(moved) < 50  # deviations happen, but not always


def test_searches_order_only_the_items_a_configuration_reads():
    active = np.array([True, False, True, False, True, False])
    base = np.array([0, 1, 2, 3, 4, 5])
    s = MCTSSearch(
        base, 10.0, np.random.default_rng(0), window=2, rollouts_per_expansion=4, configs=2, active=[active, None]
    )
    for _ in range(6):
        node, seqs, config = s.propose()
        for q in seqs:
            assert sorted(q.tolist()) == list(range(6))
            if config == 0:
                assert q[3:].tolist() == [1, 3, 5] and node.item in (0, 2, 4)  # inactive items trail, untouched
        s.update(node, [10.0] * len(seqs), seqs)
    rnd = RandomSearch(base, 1.0, np.random.default_rng(1), window=3, rollouts_per_expansion=5, active=[active])
    assert all(q[3:].tolist() == [1, 3, 5] for q in rnd.propose()[1])
    dfs = DFSSearch(base, 1.0, np.random.default_rng(0), window=3, active=[active])
    seen = []
    while (got := dfs.propose()) is not None:
        seen.append(tuple(got[1][0].tolist()))
    assert len(seen) == 6 and all(q[3:] == (1, 3, 5) for q in seen)
