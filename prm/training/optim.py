"""Optimiser, learning-rate schedule and trainable-parameter selection from a config block.

    optim = dict(lr=1e-6, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, schedule="constant",
                 warmup_steps=0, min_lr_ratio=0.0, grad_clip_norm=1.0, freeze=())

AdamW (Loshchilov & Hutter, 2019) after global-norm clipping, the setup of SLATE's verl actor
(slate.md §2.6: AdamW, lr 1e-6, betas (0.9, 0.999), weight decay 0.01, clip 1.0, constant
schedule with warmup). Weight decay applies to matrices only (rank ≥ 2), not to norm scales and
biases, as in GPT-2/Chinchilla-style training and the HF Trainer.

Frozen parameters are not given to the optimiser at all (no gradient, no Adam moments), so
freezing also saves memory; `freeze` is a tuple of regexes over dotted parameter paths.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import optax
from flax import nnx

SCHEDULES = ("constant", "cosine", "linear")


def make_schedule(
    lr: float, schedule: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `warmup_steps`, then constant / cosine / linear decay.

    Cosine and linear decay reach `lr · min_lr_ratio` at `total_steps`.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; valid schedules are {SCHEDULES}.")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"Need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}).")
    warmup = optax.linear_schedule(0.0, lr, warmup_steps)
    decay_steps = max(total_steps - warmup_steps, 1)
    if schedule == "constant":
        after = optax.constant_schedule(lr)
    elif schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, decay_steps, alpha=min_lr_ratio)
    else:
        after = optax.linear_schedule(lr, lr * min_lr_ratio, decay_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


def make_optimizer(optim: Any, total_steps: int) -> tuple[optax.GradientTransformation, Any]:
    """(AdamW with clipping, its schedule) from the `optim` config block."""
    schedule = make_schedule(
        optim.lr, optim.schedule, optim.warmup_steps, total_steps, optim.min_lr_ratio
    )
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    adamw = optax.adamw(
        schedule,
        b1=optim.b1,
        b2=optim.b2,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        mask=decay_mask,
    )
    if optim.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), adamw), schedule
    return adamw, schedule


def trainable_filter(freeze: Sequence[str] = (), lora: bool = False) -> Callable[..., bool]:
    """An NNX filter selecting the trained parameters.

    With LoRA only the `nnx.LoRAParam`s train; otherwise every `nnx.Param` whose dotted path
    matches none of the `freeze` regexes (`re.search`).
    """
    patterns = [re.compile(p) for p in freeze]
    wanted = nnx.LoRAParam if lora else nnx.Param

    def is_trainable(path: tuple[Any, ...], variable: Any) -> bool:
        if not isinstance(variable, wanted):
            return False
        name = ".".join(str(part) for part in path)
        return not any(p.search(name) for p in patterns)

    return is_trainable


def count_params(tree: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))


def updates_per_step(config: Any) -> int:
    """Optimiser updates per train step: `updates.ppo_epochs × updates.num_mini_batches`."""
    updates = config.get("updates")
    return 1 if updates is None else updates.ppo_epochs * updates.num_mini_batches


def make_part_optimizer(
    config: Any, updates_per_train_step: int = 1
) -> tuple[optax.GradientTransformation, Any]:
    """One optimiser over `{part: params}`: AdamW of `config.optim` for the policy, and for each
    extra part of `config.parts` the same settings with its own `lr` (`optax.multi_transform`).

    Schedules count optimiser updates: `total_steps × updates_per_train_step`. Returns the
    transformation and the policy's schedule.
    """
    total_updates = config.total_steps * updates_per_train_step
    policy_tx, schedule = make_optimizer(config.optim, total_updates)
    transforms = {"policy": policy_tx}
    for name, part in config.get("parts", {}).items():
        optim = ml_collections.ConfigDict(config.optim.to_dict())
        optim.lr = part.lr if part.get("lr") else config.optim.lr
        transforms[name] = make_optimizer(optim, total_updates)[0]

    def labels(params: dict[str, Any]) -> dict[str, Any]:
        return {part: jax.tree.map(lambda _, part=part: part, p) for part, p in params.items()}

    return optax.multi_transform(transforms, labels), schedule
