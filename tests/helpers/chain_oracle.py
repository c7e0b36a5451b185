"""A deterministic stand-in for the policy on chain arithmetic, for label-collection tests.

`OracleCompleter` answers like `prm.rollouts.step_labels.Completer`: from any prefix, completion
j even continues without mistakes (from the value the prefix last wrote) and j odd writes one
wrong result two steps later (or a wrong answer). With only + and − (bijections mod 10) a wrong
value never comes back to the gold answer, so MC(prefix) is 1/2 for a correct prefix and 0 for
a wrong one.
"""

import numpy as np

from prm.envs import chain_arithmetic as ca
from prm.rollouts.completions import Completions
from prm.rollouts.step_labels import Cost, Solution


def continuation(problem, steps, error_at):
    """Steps after `steps` computed from the last written value, the step numbered `error_at`
    (1-based over the whole solution) written wrong (+1)."""
    value = ca.parse_chain_step(steps[-1]).result if steps else problem.start
    out = []
    for k in range(len(steps) + 1, problem.num_ops + 1):
        op, operand = problem.ops[k - 1]
        result = ca.apply_op(value, op, operand) + (k == error_at)
        out.append(ca.format_op_step(k, value, op, operand, result % 10))
        value = result % 10
    out.append(ca.format_answer_step((value + (error_at == problem.num_ops + 1)) % 10))
    return tuple(out)


def wrong_solution(problem, error_at):
    return Solution(problem, continuation(problem, (), error_at), 0.0)


class OracleCompleter:
    def __init__(self):
        self.cost = Cost()
        self.asked = []  # per call, the prefix lengths asked

    def __call__(self, prefixes, num_completions):
        self.asked.append([len(p.steps) for p in prefixes])
        steps = []
        for p in prefixes:
            late = min(len(p.steps) + 2, p.task.num_ops + 1)
            steps.append([continuation(p.task, p.steps, 0 if j % 2 == 0 else late)
                          for j in range(num_completions)])  # fmt: skip
        correct = np.array(
            [
                [ca.verify(p.task, "".join(p.steps + s)) for s in row]
                for p, row in zip(prefixes, steps)
            ]
        )
        result = Completions(correct, np.full(correct.shape, 10, np.int32), steps)
        self.cost.add(result)
        return result
