"""A small synthetic world shared by the environment, rollout, data and evaluation tests.

Small enough to build (world, 400-token BPE, BM25 index) in about a second, large enough to have
every question type.
"""

from prm.envs.synthetic_world import WorldConfig

SMALL_WORLD_KNOBS = dict(
    num_persons=12,
    num_cities=6,
    num_countries=2,
    num_companies=4,
    num_films=4,
    questions_per_type=(("single", 20), ("bridge", 20), ("comparison", 5), ("compositional", 5)),
)
SMALL_WORLD = WorldConfig(**SMALL_WORLD_KNOBS)
SMALL_VOCAB = 400
