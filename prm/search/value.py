"""V_θ of token contexts from a scalar-head model: the value function a tree search calls.

ReST-MCTS* reads its value model at the last token of the prefix (`models/value_models.py`:
a linear head on the last position); here the head is `prm.models.ScalarHeadModel`'s, read at
each context's last token. Contexts are padded to bucketed shapes so a search compiles a few
programs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prm.models.heads import ScalarHeadModel
from prm.sampling.sampler import _bucket


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _last_token_scores(graphdef, state, ids, mask, last):
    model = nnx.merge(graphdef, state)
    scores = model(ids, mask)
    return scores[jnp.arange(ids.shape[0]), last]


def pad_contexts(contexts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) of right-padded contexts, both [bucket(B), bucket(T)] (padding rows empty)."""
    if not contexts or any(len(c) == 0 for c in contexts):
        raise ValueError("Every context needs at least one token.")
    rows, width = _bucket(len(contexts)), _bucket(max(16, max(map(len, contexts))))
    ids = np.full((rows, width), pad_id, np.int32)
    mask = np.zeros((rows, width), bool)
    for b, context in enumerate(contexts):
        ids[b, : len(context)] = context
        mask[b, : len(context)] = True
    mask[len(contexts) :, 0] = True  # padding rows attend to one token, not to none
    return ids, mask


class ScalarValueFn:
    """value_fn(contexts) -> float [len(contexts)]: the head's score at each last token (its
    sigmoid with `sigmoid=True`, for a head fitted by cross-entropy).

    The model's current parameters are read at every call, so training between searches is
    seen by the next one.
    """

    def __init__(self, model: ScalarHeadModel, pad_id: int = 0, sigmoid: bool = False):
        self.model = model
        self.pad_id = pad_id
        self.sigmoid = sigmoid  # for a head trained by cross-entropy: the value is σ(score)

    def __call__(self, contexts: Sequence[Sequence[int]]) -> np.ndarray:
        ids, mask = pad_contexts(contexts, self.pad_id)
        last = np.maximum(mask.sum(axis=1) - 1, 0)
        graphdef, state = nnx.split(self.model)
        scores = _last_token_scores(
            graphdef, state, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(last)
        )
        scores = np.asarray(scores)[: len(contexts)]
        return 1.0 / (1.0 + np.exp(-scores.astype(np.float64))) if self.sigmoid else scores
