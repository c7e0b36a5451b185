"""Logit parity with transformers (torch, CPU) on tiny random checkpoints of each family."""

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from prm.models import KVCache, from_pretrained
from tests.helpers.tiny_models import FAMILIES, make_tiny_checkpoint

_forward = nnx.jit(lambda model, ids, mask=None, cache=None: model(ids, mask, cache))
CASES = [(family, tied) for family in FAMILIES for tied in (True, False)]


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-tied={t}" for f, t in CASES])
def models(request, tmp_path_factory):
    family, tied = request.param
    path = make_tiny_checkpoint(
        tmp_path_factory.mktemp(family), family, tie_word_embeddings=tied, with_tokenizer=False
    )
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    model, config = from_pretrained(path)
    assert config.tie_word_embeddings == tied
    return model, torch_model


def _torch_logits(torch_model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        out = torch_model(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            position_ids=torch.from_numpy(positions).long(),
        )
    return out.logits.float().numpy()


def test_left_padded_logits_match_transformers(models):
    model, torch_model = models
    lengths, width = np.array([9, 4, 1, 7]), 9
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 259, (4, width)).astype(np.int32)
    mask = np.arange(width)[None] >= width - lengths[:, None]
    ids = np.where(mask, ids, 0)
    expected = _torch_logits(torch_model, ids, mask)
    logits, _ = _forward(model, ids, mask)
    np.testing.assert_allclose(np.asarray(logits)[mask], expected[mask], atol=1e-4, rtol=1e-4)


def test_cached_decoding_matches_transformers(models):
    """Prefill right-padded prompts (lengths 2 and 5) then feed the rest token by token."""
    model, torch_model = models
    rng = np.random.default_rng(1)
    full = rng.integers(0, 259, (2, 8)).astype(np.int32)
    expected = _torch_logits(torch_model, full, np.ones_like(full, bool))
    prompt_lengths = np.array([2, 5])
    prompt_mask = np.arange(5)[None] < prompt_lengths[:, None]
    cache = KVCache.init(model.config, 2, max_len=8)
    logits, cache = _forward(model, np.where(prompt_mask, full[:, :5], 0), prompt_mask, cache)
    for b, n in enumerate(prompt_lengths):
        np.testing.assert_allclose(logits[b, :n], expected[b, :n], atol=1e-4, rtol=1e-4)
    while (length := np.asarray(cache.length)).min() < 8:
        active = length < 8
        next_ids = full[np.arange(2), np.minimum(length, 7)][:, None]
        logits, cache = _forward(model, next_ids, active[:, None], cache)
        for b in np.flatnonzero(active):
            np.testing.assert_allclose(logits[b, 0], expected[b, length[b]], atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(cache.length, [8, 8])
