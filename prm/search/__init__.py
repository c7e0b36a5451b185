"""Step-level tree search over language-model actions: MCTS* (ReST-MCTS*) with KV-cache reuse
along tree paths, its value targets and its self-training loop."""

from prm.search.engine import EngineConfig, TreeEngine, ValueFn
from prm.search.mcts import Expander, MCTSConfig, backup, best_child, mcts_star, select, uct_scores
from prm.search.tree import Node, SearchTree
from prm.search.value import ScalarValueFn, pad_contexts

__all__ = [
    "EngineConfig",
    "Expander",
    "MCTSConfig",
    "Node",
    "ScalarValueFn",
    "SearchTree",
    "TreeEngine",
    "ValueFn",
    "backup",
    "best_child",
    "mcts_star",
    "pad_contexts",
    "select",
    "uct_scores",
]
