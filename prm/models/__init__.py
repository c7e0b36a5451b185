"""Qwen2/Qwen3/Llama decoders in Flax NNX, with a KV cache and HF checkpoint I/O.

model, config = from_pretrained(path)                       # local HF dir, no hub access
tokenizer = transformers.AutoTokenizer.from_pretrained(path)
logits, cache = model(input_ids, input_mask, cache)         # see Transformer.hidden_states
"""

from prm.models.cache import KVCache
from prm.models.checkpoints import from_pretrained, save_pretrained
from prm.models.config import Llama3RopeScaling, ModelConfig
from prm.models.heads import ScalarHeadModel
from prm.models.logprobs import TokenLogprobs, chunked_logprobs, token_logprobs
from prm.models.transformer import Transformer

__all__ = [
    "KVCache",
    "Llama3RopeScaling",
    "ModelConfig",
    "ScalarHeadModel",
    "TokenLogprobs",
    "Transformer",
    "chunked_logprobs",
    "from_pretrained",
    "save_pretrained",
    "token_logprobs",
]
