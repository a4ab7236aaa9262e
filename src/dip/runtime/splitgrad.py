"""Split backward without doing the work twice: ``I`` computes the input gradients and keeps, for the
weight pass ``W``, only the gradients at the nodes where each parameter's branch joins the input path.

[Note: weight groups] Walking the autograd graph from the roots, every node reachable from a stage
input is on the *input path*. For a parameter, the first input-path nodes its branch flows into are
its *intermediates*. ``I`` runs ``torch.autograd.grad`` towards the inputs with hooks that save the
gradient arriving at every intermediate; ``W`` then backpropagates those saved gradients from the
intermediates into the parameters only (the input path is not traversed again). Parameters whose
branch never meets the input path (a first chunk has no inputs) get a plain backward in ``W``. The
same idea as torch pipelining's ``stage_backward_input`` / ``stage_backward_weight``, written against
the public ``torch.autograd.graph`` API.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge, Node, get_gradient_edge


@dataclass
class WeightGroup:
    params: list[Tensor]
    intermediates: list[Node]
    saved: list[tuple | None] = field(default_factory=list)
    roots: set[Node] = field(default_factory=set)  # intermediates that are roots off the input path


@dataclass
class WeightJob:
    """What ``W`` needs after ``I``: weight groups with saved gradients, plus a fallback."""

    groups: list[WeightGroup]
    roots: list[Tensor]
    grads: list[Tensor]
    uncovered: list[Tensor]


def _node(t: Tensor) -> Node | None:
    return get_gradient_edge(t).node if t.requires_grad else None


def _reverse_edges(roots: Sequence[Node]) -> dict[Node, list[Node]]:
    """child -> nodes that consume its gradient output (edges of the forward direction)."""
    rev: dict[Node, list[Node]] = defaultdict(list)
    seen = set(roots)
    q = deque(roots)
    while q:
        node = q.popleft()
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            rev[nxt].append(node)
            if nxt not in seen:
                seen.add(nxt)
                q.append(nxt)
    return rev


def _closure(
    starts: Sequence[Node], rev: dict[Node, list[Node]], stop: set[Node], ends: set[Node] = frozenset()
) -> tuple[set[Node], set[Node]]:
    """Nodes reachable from ``starts`` along forward edges, not entering ``stop`` (returned separately,
    together with the ``ends`` the walk passes: roots reached off the stop set)."""
    seen, hit = set(starts), set()
    q = deque(starts)
    while q:
        for parent in rev.get(q.popleft(), ()):
            if parent in seen:
                continue
            if parent in stop:
                hit.add(parent)
                continue
            if parent in ends:
                hit.add(parent)
            seen.add(parent)
            q.append(parent)
    return seen, hit


def backward_input(
    roots: list[Tensor], grads: list[Tensor], inputs: list[Tensor], params: list[Tensor]
) -> tuple[list[Tensor | None], WeightJob]:
    """Input gradients of ``roots`` (with incoming ``grads``) and the job for :func:`backward_weight`."""
    root_nodes = [n for n in (_node(r) for r in roots) if n is not None]
    rev = _reverse_edges(root_nodes)
    input_nodes = [n for n in (_node(t) for t in inputs) if n is not None]
    on_path, _ = _closure(input_nodes, rev, set())
    # a branch that also reaches a root off the input path (a side output such as the DiT's t_mod)
    # takes that root's incoming gradient there: the root is one of its intermediates, seeded with
    # the gradient the caller gave (the input pass never runs such a node)
    seeds: dict[Node, dict[int, Tensor]] = defaultdict(dict)
    for r, gr in zip(roots, grads):
        if r.requires_grad:
            edge = get_gradient_edge(r)
            seeds[edge.node][edge.output_nr] = gr
    off_path_roots = (set(seeds) - on_path) if input_nodes else set()
    by_inter: dict[Node, WeightGroup] = {}
    uncovered: list[Tensor] = []
    for p in params:
        pn = _node(p)
        if pn is None or pn not in rev:
            continue  # not used by this unit
        _, inters = _closure([pn], rev, on_path, off_path_roots)
        if not inters:
            uncovered.append(p)
            continue
        group = next((by_inter[i] for i in inters if i in by_inter), None)
        if group is None:
            group = WeightGroup([], [])
        group.params.append(p)
        for i in inters:
            other = by_inter.get(i)
            if other is not None and other is not group:  # merge groups that share an intermediate
                group.params += [q for q in other.params if all(q is not x for x in group.params)]
                for j in other.intermediates:
                    by_inter[j] = group
                group.intermediates += [j for j in other.intermediates if j not in group.intermediates]
            if i not in group.intermediates:
                group.intermediates.append(i)
            by_inter[i] = group
    groups = list({id(g): g for g in by_inter.values()}.values())
    handles = []
    for g in groups:
        g.saved = [None] * len(g.intermediates)
        for k, node in enumerate(g.intermediates):
            if node in off_path_roots:
                given = seeds[node]
                g.saved[k] = tuple(given.get(i) for i in range(max(given) + 1))
                g.roots.add(node)
                continue

            def save(grad_outputs, g=g, k=k):
                g.saved[k] = tuple(grad_outputs)

            handles.append(node.register_prehook(save))
    try:
        live = [t for t in inputs if t.requires_grad]
        got = torch.autograd.grad(roots, live, grads, retain_graph=True, allow_unused=True) if live else ()
    finally:
        for h in handles:
            h.remove()
    found = {id(t): g for t, g in zip(live, got)}
    return [found.get(id(t)) for t in inputs], WeightJob(groups, roots, grads, uncovered)


def backward_weight(job: WeightJob) -> None:
    """Accumulate the parameter gradients of a :func:`backward_input` job into ``.grad``."""
    for g in job.groups:
        edges, outs = [], []
        for node, saved in zip(g.intermediates, g.saved):
            for i, grad in enumerate(saved or ()):
                if grad is not None:
                    edges.append(GradientEdge(node, i))
                    outs.append(grad)
        if not edges:
            continue
        handles = []
        if len(g.intermediates) > 1:  # an intermediate below another must not count twice
            for node, saved in zip(g.intermediates, g.saved):
                if node not in g.roots:  # a seeded root also collects what flows into it from below
                    handles.append(node.register_prehook(lambda grad_outputs, s=saved: s))
        try:
            dws = torch.autograd.grad(edges, g.params, outs, retain_graph=True, allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        for p, dw in zip(g.params, dws):
            if dw is not None:
                p.grad = dw if p.grad is None else p.grad + dw
    if job.uncovered and job.roots:
        torch.autograd.backward(job.roots, job.grads, inputs=job.uncovered)
    job.groups, job.roots, job.grads = [], [], []
