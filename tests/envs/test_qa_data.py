import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prm.envs import qa_data as Q
from prm.envs.synthetic_world import World, WorldConfig


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _search_r1_row(source, index, question, answers):
    return {
        "data_source": source,
        "prompt": [{"role": "user", "content": f"... Question: {question}\n"}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": answers}},
        "extra_info": {"split": "train", "index": index},
        "question": question,
        "golden_answers": answers,
    }


def test_search_r1_parquet_rows_get_unique_ids_across_sources(tmp_path):
    # Upstream's merged train set: NQ row 0 and HotpotQA row 0 share extra_info.index = 0.
    rows = [
        _search_r1_row("nq", 0, "who?", ["A"]),
        _search_r1_row("hotpotqa", 0, "what?", ["B", "b"]),
        _search_r1_row("nq", 1, "when?", ["1990"]),
    ]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    examples = Q.load_search_r1_files(path)
    assert [e.uid for e in examples] == ["nq/train/0", "hotpotqa/train/0", "nq/train/1"]
    assert examples[1].golden_answers == ("B", "b")
    assert examples[1].data_source == "hotpotqa" and examples[1].split == "train"
    # The same file twice: every uid stays unique.
    twice = Q.load_search_r1_files([path, path])
    assert len({e.uid for e in twice}) == 6


def test_answers_fall_back_to_the_reward_model_target(tmp_path):
    row = _search_r1_row("nq", 0, "who?", ["A"])
    del row["golden_answers"]
    (example,) = Q.load_search_r1_files(_write_jsonl(tmp_path / "a.jsonl", [row]))
    assert example.golden_answers == ("A",)


@pytest.mark.parametrize("field", ["question", "golden_answers", "data_source"])
def test_missing_field_names_file_row_and_field(tmp_path, field):
    rows = [{"question": "q", "golden_answers": ["a"], "data_source": "nq"} for _ in range(3)]
    del rows[2][field]
    path = _write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(Q.MissingFieldError, match=rf"rows\.jsonl, row 2: missing field '{field}'"):
        Q.load_search_r1_files(path)


def test_flashrag_files_take_the_source_from_the_caller(tmp_path):
    rows = [{"id": "test_7", "question": "q", "golden_answers": ["a"], "metadata": {}}]
    path = _write_jsonl(tmp_path / "test.jsonl", rows)
    (example,) = Q.load_search_r1_files(path, data_source="bamboogle")
    assert example.uid == "bamboogle//test_7" and example.data_source == "bamboogle"


def test_read_rows_formats(tmp_path):
    rows = [{"a": 1}, {"a": 2}]
    (tmp_path / "r.json").write_text(json.dumps(rows))
    assert Q.read_rows(tmp_path / "r.json") == rows
    assert Q.read_rows(_write_jsonl(tmp_path / "r.jsonl", rows)) == rows
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        Q.read_rows(tmp_path / "r.csv")
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        Q.read_rows(tmp_path / "bad.jsonl")


def test_unique_ids_suffixes_repeats_without_new_collisions():
    examples = [
        Q.QAExample(uid, "q", ("a",), "s", "", i) for i, uid in enumerate(["a", "a", "b", "a#1"])
    ]
    # "a#1" is already taken, so the second "a" becomes "a#2".
    assert [e.uid for e in Q.unique_ids(examples)] == ["a", "a#2", "b", "a#1"]


# One row per benchmark in its original release schema, and the answers each should give.
ORIGINAL_ROWS = {
    "nq": ({"question": "who sang x", "answer": ["Ann", "Ann B"]}, ("Ann", "Ann B")),
    "triviaqa": (
        {"question_id": "tq1", "question": "q", "answer": {"value": "Paris", "aliases": ["Paree"]}},
        ("Paris", "Paree"),
    ),
    "popqa": (
        {"id": 9, "question": "q", "possible_answers": '["Oslo", "Christiania"]'},
        ("Oslo", "Christiania"),
    ),
    "hotpotqa": ({"id": "h1", "question": "q", "answer": "yes", "type": "comparison"}, ("yes",)),
    "2wikimultihopqa": ({"_id": "w1", "question": "q", "answer": "1901"}, ("1901",)),
    "musique": (
        {"id": "m1", "question": "q", "answer": "Rome", "answer_aliases": ["Roma"]},
        ("Rome", "Roma"),
    ),
    "bamboogle": ({"Question": "q", "Answer": "Tokyo"}, ("Tokyo",)),
}


@pytest.mark.parametrize("name", sorted(Q.BENCHMARKS))
def test_each_benchmark_loads_from_local_files_in_its_own_schema(tmp_path, name):
    row, answers = ORIGINAL_ROWS[name]
    path = _write_jsonl(tmp_path / f"{name}.jsonl", [row, row])
    examples = Q.load_benchmark(
        name, "test", data_files=str(path), cache_dir=str(tmp_path / "cache")
    )
    assert [e.golden_answers for e in examples] == [answers, answers]
    assert all(e.data_source == name and e.split == "test" for e in examples)
    assert len({e.uid for e in examples}) == 2  # the repeated row still gets its own id


def test_benchmark_from_local_parquet_and_flashrag_schema(tmp_path):
    rows = [
        {"id": "dev_0", "question": "q", "golden_answers": ["a", "b"], "metadata": {"type": "x"}}
    ]
    path = tmp_path / "dev.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    (example,) = Q.load_benchmark(
        "hotpotqa", "dev", schema="flashrag", data_files=str(path), cache_dir=str(tmp_path / "c")
    )
    assert example.uid == "hotpotqa/dev/dev_0" and example.golden_answers == ("a", "b")


def test_benchmark_missing_field_and_bad_names(tmp_path):
    path = _write_jsonl(
        tmp_path / "nq.jsonl", [{"question": "q", "answer": ["a"]}, {"question": "q"}]
    )
    with pytest.raises(Q.MissingFieldError, match=r"nq\.jsonl, row 1: missing field 'answer'"):
        Q.load_benchmark("nq", "test", data_files=str(path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(KeyError, match="Unknown benchmark 'squad'"):
        Q.load_benchmark("squad", "test")
    with pytest.raises(ValueError, match="not on the Hugging Face Hub"):
        Q.load_benchmark("musique", "dev")
    with pytest.raises(ValueError, match="schema must be"):
        Q.load_benchmark("nq", "test", schema="kilt")


def test_world_examples():
    world = World(WorldConfig(seed=2))
    examples = Q.world_examples(world.question_rows("dev"), "dev")
    assert [e.uid.split("/")[-1] for e in examples] == [q.id for q in world.split("dev")]
    assert all(e.split == "dev" and e.data_source.startswith("synthetic_") for e in examples)
    assert examples[0].golden_answers == world.split("dev")[0].answers
