import pytest

from prm.envs import protocol
from prm.envs.qa_data import QAExample, world_examples
from prm.envs.synthetic_world import World, WorldConfig
from prm.third_party.search_r1 import data as D

EXAMPLES = [
    QAExample("nq/test/a", "who wrote x", ("Ann",), "nq", "test", 0),
    QAExample("hotpotqa/test/b", "what is y?", ("Bo", "B."), "hotpotqa", "test", 0),
    QAExample("nq/test/c", "when", ("1990",), "nq", "test", 1),
]


def test_row_has_the_upstream_schema():
    row = D.to_search_r1_row(EXAMPLES[1], index=4, template="T {question}")
    assert row == {
        "id": "hotpotqa/test/b",
        "question": "what is y?",
        "golden_answers": ["Bo", "B."],
        "data_source": "hotpotqa",
        "prompt": [{"role": "user", "content": "T what is y?"}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": ["Bo", "B."]}},
        "extra_info": {"split": "test", "index": 4, "uid": "hotpotqa/test/b"},
    }


def test_index_restarts_per_source_as_upstream():
    rows = D.to_search_r1_rows(EXAMPLES)
    assert [r["extra_info"]["index"] for r in rows] == [0, 0, 1]
    assert rows[0]["prompt"][0]["content"] == protocol.render_prompt("who wrote x")


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_write_then_load_round_trips(tmp_path, suffix):
    world = World(WorldConfig(seed=0))
    examples = EXAMPLES + world_examples(world.question_rows("test"), "test")[:5]
    path = tmp_path / f"test{suffix}"
    D.write_search_r1_file(examples, path)
    loaded = D.load_search_r1_file(path)
    assert [(e.uid, e.question, e.golden_answers, e.data_source, e.split) for e in loaded] == [
        (e.uid, e.question, e.golden_answers, e.data_source, e.split) for e in examples
    ]


def test_bad_suffix_raises(tmp_path):
    with pytest.raises(ValueError, match="write .parquet or .jsonl"):
        D.write_search_r1_file(EXAMPLES, tmp_path / "x.csv")
