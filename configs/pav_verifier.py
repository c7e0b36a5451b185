"""Language-model progress verifiers (PAV) on chain arithmetic mod 10: Q^μ by Monte Carlo, a
scalar-head Q-model, and beam search ranked by Q^π + α·A^μ against Q^π alone.

Setlur et al. 2024, "Rewarding Progress: Scaling Automated Process Verifiers for LLM Reasoning"
(arXiv 2410.08146, §3–4; shared/papers/pav_and_tree_search.md §1.6–1.7). Launch:

    python -m experiments.pav_verifier --config=configs/pav_verifier.py --workdir=<dir>
    python -m experiments.pav_verifier --config=configs/pav_verifier.py:smoke --workdir=<dir>

Why chain arithmetic (`prm.envs.chain_arithmetic`): it is the repository's small multi-step task
with a language-model policy (the SFT warm start of `configs/chain_sft.py`, ~0.4M parameters,
character tokenizer) whose outcome is checked exactly, one line per step, so a step is a natural
unit for Q, A and a beam; its SFT policy errs now and then (it imitates a noisy expert), so
search has room, and Monte Carlo Q^π of hundreds of prefixes costs seconds on CPU. A wrong
digit can still reach the gold answer (mod 10 loses information), so Q is not step correctness.

Steps (what the run writes to `<workdir>/results.json`):
1. Q^μ targets: the policy π (T = `policy_temperature`) samples `solutions_per_problem`
   solutions to each of `train_problems` training problems; `num_completions` completions of π
   after every prefix give Q^π and, from the same completions, Q^{Bo4(π)} (unbiased Best-of-K
   estimates); provers at other temperatures (`prover_temperatures`) are estimated on the same
   prefixes for the prover table (V^μ, distinguishability E Var_π[A^μ], alignment E[A^μ A^π]).
2. The verifier: a scalar head on a copy of π fitted to the Q^π targets
   (`prm.search.self_train.fit_value`): by default as in the paper (§4.2), binary cross-entropy
   against the soft targets with batches drawn half from Q̂ < 0.5 and half from Q̂ ≥ 0.5, the
   value read as σ(score); `verifier_loss=squared` regresses the score by MSE instead (no
   balancing), as the first reduced run in docs/RESULTS.md did. Held-out error against fresh MC estimates
   (`eval_completions` completions) on new solutions to test problems, for Q^π, Q^{Bo4} and
   A^{Bo4}, next to the MC noise of those estimates.
3. Beam search on `beam_problems` test problems (beam B, C candidates per state, same samples
   for every ranker): Q^π alone (α = 0) against Q^π + α·A^μ for the provers μ = π and μ = Bo4(π)
   from the verifier (Eq. 30); the final pick by Q^π. Also π's sampled accuracy and greedy.

What it should show: the verifier's Q^π error approaches the MC noise; A^{Bo4} varies more over
π's steps than A^π (distinguishability, Remark 3.1); PAV beam search with the Bo4 prover is at
least as accurate as Q-only beam search at the same sampled steps (the paper: 8× more
compute-efficient). Online RL with dense PAV rewards is not part of this run.

Options: `smoke` (a 4-step warm start, 2 problems, a few fit steps; for tests), `seed=<int>`,
`train_problems=<int>`, `eval_problems=<int>`, `beam_problems=<int>`, `verifier_steps=<int>`,
`verifier_loss=cross_entropy|squared`, `alpha=<float>`, `min_ops=<int>` and `max_ops=<int>` (the
problems' operations; default 4-6), `sft_steps=<int>` (the warm start's SFT steps; default 300, a
different value trains and caches another warm start).
"""

from __future__ import annotations

import ml_collections

from configs import chain_sft
from configs.common import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(
        arg,
        smoke=False,
        seed=0,
        train_problems=32,
        beam_problems=64,
        eval_problems=16,
        verifier_steps=300,
        verifier_loss="cross_entropy",
        alpha=0.5,
        min_ops=4,
        max_ops=6,
        sft_steps=300,
    )
    c = ml_collections.ConfigDict()
    c.seed = opts.seed
    c.warm_start = chain_sft.get_config("smoke" if opts.smoke else f"steps={opts.sft_steps}")
    # Problems: within the SFT policy's range (2-6 operations); by default the longer half,
    # where it errs more.
    c.problems = ml_collections.ConfigDict(
        {"min_ops": opts.min_ops, "max_ops": opts.max_ops, "operators": "+-*"}
    )
    c.rollout = ml_collections.ConfigDict(
        {"max_step_tokens": 16, "max_length": 128, "max_extra_steps": 2}
    )
    c.policy_temperature = 1.0
    c.max_rows = 1024  # completions decoded together in one sampler batch
    # 1. Q^μ targets.
    c.train_problems = opts.train_problems
    c.solutions_per_problem = 4
    c.num_completions = 8
    c.best_of = 4  # the BoK prover (PAV: Bo4 was best for every base policy)
    c.prover_temperatures = (0.5,)
    # 2. The verifier.
    c.verifier = ml_collections.ConfigDict(
        {"steps": opts.verifier_steps, "batch_size": 32, "learning_rate": 1e-3,
         "objective": opts.verifier_loss, "balanced": opts.verifier_loss == "cross_entropy"}
    )  # fmt: skip
    c.eval_problems = opts.eval_problems
    c.eval_solutions_per_problem = 2
    c.eval_completions = 16
    # 3. Beam search.
    c.beam_problems = opts.beam_problems
    c.beam = ml_collections.ConfigDict(
        {"beam_size": 4, "width": 3, "alpha": opts.alpha, "max_depth": 10}
    )
    if opts.smoke:
        c.train_problems = 2
        c.solutions_per_problem = 2
        c.num_completions = 4
        c.prover_temperatures = (0.5,)
        c.verifier.steps = 3
        c.verifier.batch_size = 4
        c.eval_problems = 2
        c.eval_solutions_per_problem = 1
        c.eval_completions = 4
        c.beam_problems = 2
        c.beam.beam_size = 2
        c.beam.width = 2
    return c
