"""String registries: configs name trainers, models, rewards, estimators, data and judges.

        @TRAINERS.register("sft")
        class SFTTrainer: ...

        TRAINERS.get(config.trainer)   # KeyError listing the valid names if unknown

Modules register on import; `prm.registry.import_all()` imports every module that registers,
so a registry lookup never depends on what the caller happened to import first.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# Modules whose import registers components. Kept explicit (not a package walk) so the set of
# registered names is greppable and import side effects stay predictable.
REGISTERING_MODULES: list[str] = [
    "prm.data.chain",
    "prm.data.demonstrations",
    "prm.data.qa_questions",
    "prm.data.questions",
    "prm.data.toy",
    "prm.judges.http",
    "prm.judges.local",
    "prm.judges.reference",
    "prm.trainers.implicit_prm",
    "prm.trainers.prime",
    "prm.trainers.search_r1",
    "prm.trainers.sft",
    "prm.trainers.slate",
    "prm.trainers.spa_rl",
    "prm.trainers.step_search",
]


class Registry:
    """A name -> object table with a helpful error for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def decorator(obj: Any) -> Any:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice.")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> Any:
        import_all()
        if name not in self._entries:
            valid = ", ".join(sorted(self._entries)) or "(none registered)"
            raise KeyError(f"Unknown {self.kind} {name!r}. Valid {self.kind} names: {valid}.")
        return self._entries[name]

    def names(self) -> list[str]:
        import_all()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        import_all()
        return name in self._entries


def import_all() -> None:
    for module in REGISTERING_MODULES:
        importlib.import_module(module)


TRAINERS = Registry("trainer")
MODELS = Registry("model")
REWARDS = Registry("reward")
ESTIMATORS = Registry("advantage estimator")
DATASETS = Registry("dataset")
JUDGES = Registry("judge")
