"""Step-aware KV-cache sampling: prefill, decode to a step boundary, force tokens, fork k."""

from prm.sampling.filters import (
    GREEDY,
    SamplingParams,
    filter_logits,
    sample_tokens,
    top_k_filter,
    top_p_filter,
)
from prm.sampling.gather import Row, compact, gather, live_cache_bytes, row_lengths
from prm.sampling.sampler import FinishReason, Generation, Sampler, Session
from prm.sampling.stops import match_stops, pack_stops

__all__ = [
    "GREEDY",
    "FinishReason",
    "Generation",
    "Row",
    "Sampler",
    "SamplingParams",
    "Session",
    "compact",
    "filter_logits",
    "gather",
    "live_cache_bytes",
    "match_stops",
    "pack_stops",
    "row_lengths",
    "sample_tokens",
    "top_k_filter",
    "top_p_filter",
]
