"""QA evaluation tables: per-group means by hand, exact markdown/CSV, and a real greedy run."""

import csv
import io

import numpy as np
import pytest
from flax import nnx

from prm.envs import protocol as P
from prm.envs.assets import load_world_assets
from prm.envs.expert import ExpertConfig
from prm.evaluation import qa as E
from prm.models import ModelConfig, Transformer
from prm.rollouts import RolloutConfig
from prm.sampling import SamplingParams
from tests.helpers.worlds import SMALL_WORLD

RECORDS = [
    {"data_source": "bridge", "em": 1.0, "f1": 1.0},
    {"data_source": "bridge", "em": 0.0, "f1": 0.5},
    {"data_source": "single", "em": 1.0, "f1": 1.0},
    {"data_source": "bridge", "em": 0.0, "f1": 0.0},
]


def test_summarize_means_per_group_then_all():
    rows = E.summarize(RECORDS)
    # bridge: EM (1+0+0)/3, F1 (1+0.5+0)/3; single: 1, 1; all: EM 2/4, F1 2.5/4.
    assert [r["group"] for r in rows] == ["bridge", "single", "all"]
    assert [r["n"] for r in rows] == [3, 1, 4]
    np.testing.assert_allclose([r["em"] for r in rows], [1 / 3, 1.0, 0.5])
    np.testing.assert_allclose([r["f1"] for r in rows], [0.5, 1.0, 0.625])
    with pytest.raises(ValueError, match="no records"):
        E.summarize([])


def test_markdown_and_csv_tables():
    tables = {"policy": E.summarize(RECORDS), "expert": E.summarize(RECORDS[:2] + RECORDS[2:])}
    assert E.format_markdown(tables) == (
        "| group | n | policy EM | policy F1 | expert EM | expert F1 |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        "| bridge | 3 | 0.333 | 0.500 | 0.333 | 0.500 |\n"
        "| single | 1 | 1.000 | 1.000 | 1.000 | 1.000 |\n"
        "| all | 4 | 0.500 | 0.625 | 0.500 | 0.625 |\n"
    )
    rows = list(csv.DictReader(io.StringIO(E.format_csv(tables))))
    assert [r["group"] for r in rows] == ["bridge", "single", "all"]
    assert float(rows[2]["policy_F1"]) == 0.625 and rows[0]["n"] == "3"


def test_tables_over_different_groups_are_an_error():
    tables = {"policy": E.summarize(RECORDS), "expert": E.summarize(RECORDS[2:3])}
    with pytest.raises(ValueError, match="same questions"):
        E.format_markdown(tables)


def test_metrics_round_trip():
    tables = {"policy": E.summarize(RECORDS), "expert": E.summarize(RECORDS)}
    metrics = E.flatten_tables(tables)
    assert metrics["qa/policy/bridge/em"] == 1 / 3 and metrics["qa/expert/all/n"] == 4.0
    assert E.tables_from_metrics({**metrics, "loss": 1.0, "qa/x": 2.0}) == tables


def test_write_tables(tmp_path):
    md, csv_path = E.write_tables({"policy": E.summarize(RECORDS)}, tmp_path / "out", "qa_test")
    assert md.read_text() == E.format_markdown({"policy": E.summarize(RECORDS)})
    assert csv_path.name == "qa_test.csv" and sorted(p.name for p in md.parent.iterdir()) == [
        "qa_test.csv",
        "qa_test.md",
    ]


def test_world_evaluation_with_a_random_policy_and_the_expert(tmp_path_factory):
    assets = load_world_assets(SMALL_WORLD, tmp_path_factory.getbasetemp() / "worlds", 400)
    tokenizer = assets.tokenizer
    config = ModelConfig(
        family="qwen3", vocab_size=len(tokenizer), hidden_size=32, num_layers=1, num_heads=2,
        num_kv_heads=1, head_dim=16, intermediate_size=64, qk_norm=True,
        max_position_embeddings=512, eos_token_ids=(tokenizer.eos_token_id,),
    )  # fmt: skip
    env = P.EnvConfig(topk=2, max_turns=1, max_obs_tokens=None, forced_answer="<answer>")
    rollout_config = RolloutConfig(max_step_tokens=8, max_length=320)
    tables = E.evaluate_world(
        Transformer(config, rngs=nnx.Rngs(0)),
        assets.world,
        tokenizer,
        assets.retriever,
        "test",
        env,
        rollout_config,
        ExpertConfig(0.0, 0.0, 0.0, 0.0),
        max_questions=4,
        batch_size=3,
    )
    questions = assets.world.split("test")[:4]
    groups = sorted({f"synthetic_{q.qtype}" for q in questions}) + ["all"]
    assert [r["group"] for r in tables["policy"]] == groups
    assert tables["policy"][-1]["n"] == 4 and tables["expert"][-1]["n"] == 4
    # A random policy does not produce a correct answer.
    assert tables["policy"][-1]["em"] == 0.0
    with pytest.raises(ValueError, match="greedily"):
        E.evaluate_policy(
            None, tokenizer, assets.retriever, [], env,
            RolloutConfig(sampling=SamplingParams(1.0)),
        )  # fmt: skip
