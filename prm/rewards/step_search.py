"""StepSearch's rewards: F1 answer and search-key rewards at the end, information gain minus
redundancy at every search step (StePPO).

StepSearch (Wang et al., 2025, arXiv 2505.15107; notes: search_r1_stepsearch.md §2.2). The
paper describes the channels; the formulas are those of its released code
(`verl/utils/reward_score/qa_step.py`, `submodule.py`, `main_ppo.py` of Zillwang/StepSearch),
which is what was run. Per trajectory, with gold answers A, gold search keys
K = [K_1..K_m] (K_j: paraphrases of sub-query j) and gold support passages G = [g_1..g_n]:

    format gate   the last <answer>…</answer> is followed only by whitespace; else the global
                  reward is −1 and there are no step rewards
    global        R = round(F1(â, A), 4) + 0.618 · r_key                 at the last token
    step t        s_t = IG_t − P_t,  0.6 · s_t                            at the token closing
                                                                          the t-th </search>
    c_t^i  = max_{d ∈ D_t} cos_tfidf(d, g_i)                 D_t: passages of search t
    IG_t   = (1/n) Σ_i max(c_t^i − m_{t−1}^i, 0),   m_t^i = max(m_{t−1}^i, c_t^i),  m_0 = 0
    P_t    = (1/|D_t|) · #{d ∈ D_t seen before: in an earlier search or earlier in D_t}
    r_key  = (1/m) Σ_j s_j; each query q in order sets s_{j*} = max_{k ∈ K_j*} F1(q, k) with
             j* = argmax_j max_{k ∈ K_j} F1(q, k)   (a later query overwrites, not max)

Strings are scored on the host (`numpy`); `step_search_token_rewards` puts the scalars on the
token grid.

TF-IDF: the reference fits scikit-learn's `TfidfVectorizer()` (defaults) on [d] + G for every
passage d. scikit-learn is not a prm dependency and this is its whole use, so `tfidf_cosines`
computes the same numbers in a few lines of numpy: lowercase, tokens `(?u)\\b\\w\\w+\\b`, raw
counts, idf = ln((1 + N)/(1 + df)) + 1 (smooth_idf), rows L2-normalised (sklearn's
`TfidfTransformer` defaults).
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Sequence

import chex
import jax.numpy as jnp
import numpy as np

from prm.advantages import broadcast_step_values_to_tokens
from prm.metrics import qa
from prm.rewards.outcome import outcome_token_rewards

# scikit-learn's default `token_pattern`: words of two or more word characters.
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


@dataclasses.dataclass(frozen=True)
class StepSearchRewardConfig:
    """The released `train.sh` settings: step scale 0.6, search-key coefficient 0.618, format
    penalty −1, both step channels on (`information_gain`, `redundancy_penalty`)."""

    step_scale: float = 0.6
    search_key_coef: float = 0.618
    format_penalty: float = -1.0
    information_gain: bool = True
    redundancy_penalty: bool = True


def tfidf_cosines(document: str, golds: Sequence[str]) -> np.ndarray:
    """float64[n]: cos(tfidf(document), tfidf(g_i)) with the TF-IDF fit on [document] + golds.

    sklearn `TfidfVectorizer()` defaults (module docstring); a text without tokens has the zero
    vector, so its cosines are 0. Cosines of non-negative vectors lie in [0, 1].
    """
    texts = [document, *golds]
    counts = [collections.Counter(_TOKEN.findall(text.lower())) for text in texts]
    vocabulary = sorted(set().union(*counts))
    if not vocabulary:
        return np.zeros(len(golds))
    tf = np.array([[c[word] for word in vocabulary] for c in counts], np.float64)
    df = np.count_nonzero(tf, axis=0)
    idf = np.log((1 + len(texts)) / (1 + df)) + 1
    tfidf = tf * idf
    norms = np.linalg.norm(tfidf, axis=1, keepdims=True)
    unit = np.divide(tfidf, norms, out=np.zeros_like(tfidf), where=norms > 0)
    return unit[1:] @ unit[0]


def match_degrees(passages: Sequence[str], golds: Sequence[str]) -> np.ndarray:
    """float64[n]: c^i = max over passages d of `tfidf_cosines(d, golds)[i]`, both sides
    SQuAD-normalised first (as the reference); zeros without passages."""
    golds = [qa.normalize_answer(g) for g in golds]
    cosines = [tfidf_cosines(qa.normalize_answer(d), golds) for d in passages]
    return np.max(cosines, axis=0) if cosines else np.zeros(len(golds))


def information_gains(matches: np.ndarray) -> np.ndarray:
    """float64[S]: IG_t = (1/n) Σ_i max(c_t^i − m_{t−1}^i, 0) from `matches` [S, n] = c_t^i.

    m_{t−1}^i = max_{s < t} c_s^i (0 for t = 0): the best match to gold passage i so far.
    No gold passages (n = 0) gives zeros.
    """
    chex.assert_rank(matches, 2)
    steps, golds = matches.shape
    if golds == 0:
        return np.zeros(steps)
    memory = np.maximum.accumulate(np.vstack([np.zeros((1, golds)), matches]), axis=0)[:-1]
    return np.mean(np.maximum(matches - memory, 0.0), axis=1)


def redundancy_penalties(passages_per_search: Sequence[Sequence[str]]) -> np.ndarray:
    """float64[S]: P_t = fraction of search t's passages already seen, in an earlier search or
    earlier in the same one (compared as raw strings); 0 for a search without passages."""
    seen: set[str] = set()
    penalties = []
    for passages in passages_per_search:
        repeats = 0
        for passage in passages:
            repeats += passage in seen
            seen.add(passage)
        penalties.append(repeats / len(passages) if passages else 0.0)
    return np.asarray(penalties, np.float64)


def search_key_reward(queries: Sequence[str], search_keys: Sequence[Sequence[str]]) -> float:
    """r_key = (1/m) Σ_j s_j over the m gold sub-queries (module docstring).

    Each query in order finds the sub-query j* whose paraphrases it matches best (token F1,
    first j on ties) and sets s_{j*} to that F1, overwriting what an earlier query set there,
    as the reference code does (so a later, worse query for the same sub-query lowers it).
    0 without gold keys.
    """
    if not search_keys:
        return 0.0
    scores = np.zeros(len(search_keys))
    for query in queries:
        best = [qa.f1_score(query, keys) if keys else 0.0 for keys in search_keys]
        scores[int(np.argmax(best))] = max(best)
    return float(np.mean(scores))


@dataclasses.dataclass(frozen=True)
class StepSearchReward:
    """One trajectory's StepSearch rewards and their parts (for logging)."""

    format_ok: bool
    answer_f1: float  # round(F1, 4); 0 when the gate fails
    search_keys: float  # r_key; 0 when the gate fails
    global_reward: float  # answer_f1 + coef · search_keys, or the format penalty
    gains: np.ndarray  # float64[S]: IG_t per executed search
    penalties: np.ndarray  # float64[S]: P_t per executed search
    step_scores: np.ndarray  # float64[S]: s_t (unscaled); zeros when the gate fails


def trajectory_rewards(
    response: str,
    golds: Sequence[str],
    queries: Sequence[str],
    search_keys: Sequence[Sequence[str]],
    passages_per_search: Sequence[Sequence[str]],
    gold_passages: Sequence[str],
    config: StepSearchRewardConfig = StepSearchRewardConfig(),
) -> StepSearchReward:
    """StepSearch's rewards of one trajectory.

    Args:
      response: the policy's text after the prompt, observations included (the gate reads it).
      golds: gold answer and aliases.
      queries: every `<search>` content, in order (the search-key reward reads them all).
      search_keys: per gold sub-query, its paraphrases.
      passages_per_search: per executed search, its passages' texts (titles left out, like
        the reference's text after each `##>`).
      gold_passages: the gold support passages' texts.
      config: coefficients and switches.
    """
    gold_list = qa.as_gold_list(golds)
    searches = len(passages_per_search)
    matches = np.array([match_degrees(p, gold_passages) for p in passages_per_search])
    gains = information_gains(matches.reshape(searches, len(gold_passages)))
    penalties = redundancy_penalties(passages_per_search)
    if not qa.answer_is_final(response):
        zeros = np.zeros(searches)
        return StepSearchReward(False, 0.0, 0.0, config.format_penalty, gains, penalties, zeros)
    answer = qa.extract_answer(response)
    answer_f1 = round(qa.f1_score(answer, gold_list), 4) if answer is not None else 0.0
    keys = search_key_reward(queries, search_keys)
    scores = (
        config.information_gain * gains - config.redundancy_penalty * penalties
        if gold_passages
        else np.zeros(searches)
    )
    return StepSearchReward(
        True, answer_f1, keys, answer_f1 + config.search_key_coef * keys, gains, penalties, scores
    )


def step_search_token_rewards(
    step_rewards: chex.Array, step_id: chex.Array, global_rewards: chex.Array, mask: chex.Array
) -> chex.Array:
    """StePPO's reward tensor `[B, T]`: step k's reward on the last token of step k, then the
    global reward *assigned* (not added) on the last token of `mask` (the reference's
    `reward[L−1] = R_global` after the step rewards).

    Args:
      step_rewards: `[B, S]`, already scaled (0.6 · s_t on search steps, 0 on other steps).
      step_id: `[B, T]` per-token step index, −1 off the policy's steps (`TrajectoryBatch`).
      global_rewards: `[B]`.
      mask: `[B, T]` response tokens; the global reward goes on the last one (all-zero rows
        get no global reward).
    """
    chex.assert_rank([step_rewards, step_id, global_rewards, mask], [2, 2, 1, 2])
    chex.assert_equal_shape([step_id, mask])
    next_step = jnp.pad(step_id[:, 1:], ((0, 0), (0, 1)), constant_values=-1)
    step_end = (step_id >= 0) & (next_step != step_id)
    per_token = jnp.where(step_end, broadcast_step_values_to_tokens(step_rewards, step_id), 0.0)
    # The outcome's position, marked by placing a 1 there (a global reward may be 0).
    at_last = outcome_token_rewards(jnp.ones(global_rewards.shape), mask) > 0
    return jnp.where(at_last, global_rewards[:, None], per_token)
