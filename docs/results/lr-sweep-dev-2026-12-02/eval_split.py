"""Greedy EM of HF exports on a world split: eval_split.py <split> <max_q> <hf_dir>..."""

import dataclasses
import sys

from configs import search_r1
from prm.envs.assets import load_world_assets, world_config_from
from prm.envs.expert import WORLD_ENV_CONFIG
from prm.evaluation.qa import evaluate_world, format_markdown
from prm.models.checkpoints import from_pretrained
from prm.rollouts import RolloutConfig

c = search_r1.get_config()
data, qa = c.data, c.eval.qa
assets = load_world_assets(world_config_from(data["world"]), None, data["vocab_size"])
env = dataclasses.replace(
    WORLD_ENV_CONFIG, **{**dict(data["env"]), "forced_answer": qa["forced_answer"]}
)
split, max_q = sys.argv[1], int(sys.argv[2])
for path in sys.argv[3:]:
    model = from_pretrained(path)[0]
    tables = evaluate_world(
        model,
        assets.world,
        assets.tokenizer,
        assets.retriever,
        split,
        env,
        RolloutConfig(max_step_tokens=48, max_length=data["seq_len"]),
        max_questions=max_q,
    )
    print(path, split)
    print(format_markdown(tables), flush=True)
