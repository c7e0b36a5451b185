"""The helpers this repository's config files start from, re-exported from the prm package.

They live in `prm.training.config`, so a project that installs prm writes its own config files
with the same helpers (`from prm.training.config import base_config, model_config, parse_arg`).
"""

from prm.training.config import MODEL_SIZES, base_config, model_config, parse_arg

__all__ = ["MODEL_SIZES", "base_config", "model_config", "parse_arg"]
