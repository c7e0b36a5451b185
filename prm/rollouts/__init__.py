"""Rollouts: play any text env with the KV-cache sampler and collate trajectories for training.

Above `prm.envs` (text and tags) and `prm.sampling` (tokens): `Env` is the interface an env
offers, `rollout` plays batched (and grouped) episodes of one, and `collate` pads any
trajectory rows (whole episodes, step siblings) into one `TrajectoryBatch`.
"""

from prm.rollouts.env import Env, SingleTurnEnv
from prm.rollouts.rollout import DEFAULT_ROLLOUT, EnvStepError, RolloutConfig, rollout
from prm.rollouts.trajectory import EpisodeEnd, Trajectory, TrajectoryBatch, collate

__all__ = [
    "DEFAULT_ROLLOUT",
    "Env",
    "EnvStepError",
    "EpisodeEnd",
    "RolloutConfig",
    "SingleTurnEnv",
    "Trajectory",
    "TrajectoryBatch",
    "collate",
    "rollout",
]
