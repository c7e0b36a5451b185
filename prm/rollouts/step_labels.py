"""Step labels from Monte Carlo completions: Math-Shepherd and OmegaPRM, batched.

Both turn sampled solutions into per-step labels with `prm.rollouts.completions.complete` (every
prefix prefilled once, forked into its completions) and the label math of `prm.labels`:

* `math_shepherd` (Wang et al. 2023, Eq. 3-4): N completions after every step prefix of every
  solution, all prefixes in one batched call; hard (any completion right) and soft (fraction
  right) labels. The last step's label is the solution's own outcome (nothing left to complete).
* `locate_first_errors` (OmegaPRM, Luo et al. 2024, §3.2): the binary search for the first
  error of many incorrect solutions in lockstep (`prm.labels.FirstErrorBisection`): each round
  rolls out the probes of all unfinished searches in one call, so ⌈log2 M⌉ calls serve them all.
  `brute_force_first_errors` is the per-step MC baseline it is measured against.
* `omegaprm` (§3.3): per question a tree of states (prefixes with their MC), a pool of
  incorrect rollouts from states with 0 < MC < 1, and rounds of select-by-Q·U → binary search →
  new states, batched across questions. It yields soft (MC), hard (MC > 0) and pairwise
  (siblings' ½(1 + p − q)) labels.

Costs are counted in MC estimates (one estimate = k completions of one prefix, the paper's unit
of a "rollout from a prefix") and in completions and sampled tokens (`Cost`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from prm import labels
from prm.envs.protocol import TextTokenizer
from prm.rollouts.completions import Completions, Prefix, complete
from prm.rollouts.env import Env
from prm.rollouts.rollout import RolloutConfig
from prm.sampling import Sampler


@dataclasses.dataclass
class Cost:
    """Policy work spent: MC estimates (prefixes rolled out), completions, sampled tokens and
    batched `complete` calls."""

    estimates: int = 0
    completions: int = 0
    tokens: int = 0
    calls: int = 0

    def add(self, completions: Completions) -> None:
        self.estimates += completions.correct.shape[0]
        self.completions += completions.correct.size
        self.tokens += int(completions.num_tokens.sum())
        self.calls += 1


@dataclasses.dataclass(frozen=True)
class Solution[Task]:
    """A sampled solution: its task, step texts (the last one answers) and outcome (1: right)."""

    task: Task
    steps: tuple[str, ...]
    outcome: float


class Completer[Task]:
    """`complete` with the sampler, env, tokenizer and rollout config bound, a fresh key per
    call, and the cost counted."""

    def __init__(
        self,
        sampler: Sampler,
        env: Env[Task],
        tokenizer: TextTokenizer,
        config: RolloutConfig,
        key: jax.Array,
        max_rows: int = 1024,
    ):
        self.sampler, self.env, self.tokenizer = sampler, env, tokenizer
        self.config, self.max_rows = config, max_rows
        self.key = key
        self.cost = Cost()

    def __call__(self, prefixes: Sequence[Prefix[Task]], num_completions: int) -> Completions:
        key = jax.random.fold_in(self.key, self.cost.calls)
        result = complete(
            self.sampler,
            self.env,
            self.tokenizer,
            prefixes,
            num_completions,
            self.config,
            key,
            self.max_rows,
        )
        self.cost.add(result)
        return result


def sample_solutions[Task](
    completer: Completer[Task], tasks: Sequence[Task], num_per_task: int
) -> list[Solution[Task]]:
    """`num_per_task` solutions per task (task-major), sampled from the empty prefix."""
    result = completer([Prefix(task) for task in tasks], num_per_task)
    return [
        Solution(task, result.steps[i][j], float(result.correct[i, j]))
        for i, task in enumerate(tasks)
        for j in range(num_per_task)
    ]


def step_prefixes[Task](solutions: Sequence[Solution[Task]]) -> list[Prefix[Task]]:
    """Every proper step prefix x_{1:t} (1 ≤ t < M) of every solution, solution-major."""
    return [Prefix(s.task, s.steps[:t]) for s in solutions for t in range(1, len(s.steps))]


def math_shepherd[Task](
    completer: Completer[Task], solutions: Sequence[Solution[Task]], num_completions: int
) -> list[np.ndarray]:
    """Per solution, bool[M, N]: row t − 1 says which of N completions after step t reached
    the gold answer (Math-Shepherd's completion set of step t). The last row is the solution's
    own outcome, repeated (the full solution has nothing to complete).

    All prefixes of all solutions go to the policy in one batched call. Labels:
    `prm.labels.hard_estimation_labels(rows)` and `soft_estimation_labels(rows)`, or of
    `rows[:, :n]` for fewer completions (the first n are an i.i.d. sample of n).
    """
    prefixes = step_prefixes(solutions)
    result = completer(prefixes, num_completions) if prefixes else None
    out, offset = [], 0
    for solution in solutions:
        inner = len(solution.steps) - 1
        rows = result.correct[offset : offset + inner] if inner else np.zeros((0, num_completions))
        offset += inner
        last = np.full((1, num_completions), solution.outcome > 0)
        out.append(np.concatenate([rows, last]).astype(bool))
    return out


@dataclasses.dataclass(frozen=True)
class ProbedSearch[Task]:
    """One solution's binary search: its result, and each probed prefix with its completions."""

    search: labels.FirstErrorSearch
    probes: tuple[Prefix[Task], ...]
    completions: tuple[Completions, ...]


def locate_first_errors[Task](
    completer: Completer[Task],
    solutions: Sequence[Solution[Task]],
    num_completions: int,
    heads: Sequence[tuple[str, ...]] | None = None,
) -> list[ProbedSearch[Task]]:
    """OmegaPRM's binary search on every (incorrect) solution at once, one batched call per round.

    Solution i's steps follow `heads[i]` (a state known to be correct; default: the empty
    prefix), so probe t rolls out `heads[i] + steps[:t]`; the first error is a 1-based index
    into `steps`. ⌈log2 max M⌉ calls serve all solutions.
    """
    searches = [labels.FirstErrorBisection(len(s.steps)) for s in solutions]
    heads = list(heads) if heads is not None else [()] * len(solutions)
    probes: list[list[tuple[Prefix[Task], Completions]]] = [[] for _ in solutions]
    while live := [i for i, search in enumerate(searches) if not search.done]:
        asked = [
            Prefix(solutions[i].task, heads[i] + solutions[i].steps[: searches[i].probe()])
            for i in live
        ]
        result = completer(asked, num_completions)
        for row, i in enumerate(live):
            searches[i].record(float(result.mc[row]))
            probes[i].append((asked[row], _take(result, row)))
    return [
        ProbedSearch(search.result(), tuple(p for p, _ in found), tuple(c for _, c in found))
        for search, found in zip(searches, probes)
    ]


def brute_force_first_errors[Task](
    completer: Completer[Task], solutions: Sequence[Solution[Task]], num_completions: int
) -> tuple[list[int], list[np.ndarray]]:
    """Per-step MC baseline: every prefix of every solution rolled out (M − 1 estimates each).

    Returns per solution the first error it implies (the first t with MC(x_{1:t}) = 0, else M)
    and its MC estimates [M − 1].
    """
    completions = math_shepherd(completer, solutions, num_completions)
    first_errors, mcs = [], []
    for solution, rows in zip(solutions, completions):
        mc = rows[:-1].mean(axis=1)
        zero = np.flatnonzero(mc == 0.0)
        first_errors.append(int(zero[0]) + 1 if zero.size else len(solution.steps))
        mcs.append(mc)
    return first_errors, mcs


def _take(result: Completions, row: int) -> Completions:
    return Completions(result.correct[row : row + 1], result.num_tokens[row : row + 1],
                       result.steps[row : row + 1])  # fmt: skip


@dataclasses.dataclass(frozen=True)
class OmegaPRMConfig:
    """OmegaPRM's constants (§3.3, App. A; the paper's values by default).

    rollouts_per_estimate: k completions per MC estimate (8).
    max_selections: rounds of select → binary search per question (the paper's search limit is
      100; each round costs about ⌈log2 M⌉ estimates).
    alpha, beta, length_scale: Q(s, r) = α^{1−MC(s)} · β^{len(r)/L} (Eq. 2; len in tokens).
    c_puct: U(s) = c_puct · sqrt(Σ_i N(s_i)) / (1 + N(s)) (Eq. 3).
    """

    rollouts_per_estimate: int = 8
    max_selections: int = 100
    alpha: float = 0.5
    beta: float = 0.9
    length_scale: float = 500.0
    c_puct: float = 0.125


@dataclasses.dataclass
class OmegaState:
    """A tree state: a prefix with its MC estimate from all rollouts made from it.

    A located first error that was never rolled out (the wrong solution's full length) is a
    state with MC 0 and no rollouts: it is known wrong.
    """

    steps: tuple[str, ...]
    parent: int  # index of the parent state in the tree, −1 for the root
    rollouts: list[tuple[tuple[str, ...], bool, int]]  # (steps after the prefix, correct, tokens)
    visits: int = 0  # N(s): how often a rollout of this state was selected

    @property
    def mc(self) -> float:
        if not self.rollouts:
            return 0.0
        return float(np.mean([correct for _, correct, _ in self.rollouts]))


@dataclasses.dataclass(frozen=True)
class OmegaSearch:
    """One selection: a rollout of state `state` searched; `first_error` is 1-based in
    `rollout`, and `probes` the prefix lengths (into `rollout`) rolled out, in order."""

    state: int
    rollout: tuple[str, ...]
    first_error: int
    probes: tuple[int, ...]


@dataclasses.dataclass
class OmegaTree[Task]:
    """One question's OmegaPRM tree: states (index 0 the root) and the searches run on it."""

    task: Task
    states: list[OmegaState]
    searches: list[OmegaSearch] = dataclasses.field(default_factory=list)

    def find(self, steps: tuple[str, ...]) -> int | None:
        return next((i for i, s in enumerate(self.states) if s.steps == steps), None)

    def pool(self) -> list[tuple[int, int]]:
        """(state, rollout) pairs eligible for selection: incorrect rollouts of states with
        0 < MC < 1, not selected yet."""
        searched = {(s.state, s.rollout) for s in self.searches}
        return [
            (i, j)
            for i, state in enumerate(self.states)
            if 0.0 < state.mc < 1.0
            for j, (steps, correct, _) in enumerate(state.rollouts)
            if not correct and (i, steps) not in searched
        ]

    def edges(self) -> list[tuple[int, int]]:
        """(parent, child) state indices: one labelled edge per non-root state."""
        return [(s.parent, i) for i, s in enumerate(self.states) if s.parent >= 0]

    def pairs(self) -> list[tuple[int, int]]:
        """Sibling states (a, b), a < b, with different MC: OmegaPRM's pairwise examples."""
        children: dict[int, list[int]] = {}
        for parent, child in self.edges():
            children.setdefault(parent, []).append(child)
        return [
            (a, b)
            for kids in children.values()
            for n, a in enumerate(kids)
            for b in kids[n + 1 :]
            if self.states[a].mc != self.states[b].mc
        ]


def pairwise_preference(mc_a: float, mc_b: float) -> float:
    """OmegaPRM's pairwise target P(a ≻ b) with ties split: ½(1 + p − q) (§3.4)."""
    return 0.5 * (1.0 + mc_a - mc_b)


def select_rollout(tree: OmegaTree, config: OmegaPRMConfig) -> tuple[int, int] | None:
    """The pool's argmax of Q(s, r) + U(s) (Eq. 2-3), None for an empty pool."""
    pool = tree.pool()
    if not pool:
        return None
    states = [tree.states[i] for i, _ in pool]
    mc = np.array([s.mc for s in states])
    length = np.array([s.rollouts[j][2] for s, (_, j) in zip(states, pool)], np.float32)
    visits = np.array([s.visits for s in states], np.float32)
    total = sum(tree.states[i].visits for i in {i for i, _ in pool})
    score = np.asarray(
        labels.omegaprm_rollout_value(mc, length, config.alpha, config.beta, config.length_scale)
    ) + np.asarray(labels.omegaprm_exploration_bonus(visits, np.float32(total), config.c_puct))
    return pool[int(np.argmax(score))]


def omegaprm[Task](
    completer: Completer[Task], tasks: Sequence[Task], config: OmegaPRMConfig = OmegaPRMConfig()
) -> list[OmegaTree[Task]]:
    """OmegaPRM's divide-and-conquer MCTS (§3.3) on every task at once.

    The roots are rolled out k times (one call for all tasks); a task whose root has MC 0 or 1
    has an empty pool and stops there (the paper's question filter). Each round, every tree
    with a non-empty pool selects argmax Q + U, and the binary searches of all selected
    rollouts run in lockstep (`locate_first_errors`, one call per bisection round). Each probed
    prefix becomes a state (merged with an equal one already in the tree), chained from the
    selected state in order of length; the first error becomes a state with MC 0 if it was
    never probed. Stops after `config.max_selections` rounds or when every pool is empty.
    """
    k = config.rollouts_per_estimate
    roots = completer([Prefix(task) for task in tasks], k)
    trees = [
        OmegaTree(task, [OmegaState((), -1, _rollouts(roots, i))]) for i, task in enumerate(tasks)
    ]
    for _ in range(config.max_selections):
        chosen = [(tree, pick) for tree in trees if (pick := select_rollout(tree, config))]
        if not chosen:
            break
        solutions, heads = [], []
        for tree, (i, j) in chosen:
            tree.states[i].visits += 1
            solutions.append(Solution(tree.task, tree.states[i].rollouts[j][0], 0.0))
            heads.append(tree.states[i].steps)
        found = locate_first_errors(completer, solutions, k, heads)
        for (tree, (i, _)), solution, probed in zip(chosen, solutions, found):
            _grow(tree, i, solution.steps, probed)
    return trees


def _rollouts(result: Completions, row: int) -> list[tuple[tuple[str, ...], bool, int]]:
    return [
        (result.steps[row][j], bool(result.correct[row, j]), int(result.num_tokens[row, j]))
        for j in range(result.correct.shape[1])
    ]


def _grow(tree: OmegaTree, state: int, rollout: tuple[str, ...], probed: ProbedSearch) -> None:
    """Adds a search's probed prefixes (and its first error) to `tree` as a chain of states."""
    head = tree.states[state].steps
    first_error = probed.search.first_error
    found = {len(p.steps) - len(head): c for p, c in zip(probed.probes, probed.completions)}
    parent = state
    for t in sorted({*found, first_error}):
        steps = head + rollout[:t]
        new = _rollouts(found[t], 0) if t in found else []
        index = tree.find(steps)
        if index is None:
            tree.states.append(OmegaState(steps, parent, new))
            index = len(tree.states) - 1
        else:
            tree.states[index].rollouts.extend(new)
        parent = index
    tree.searches.append(
        OmegaSearch(state, rollout, first_error, tuple(t for t, _ in probed.search.estimates))
    )
