"""The Search-R1 question source: rows, batches and resume, tokenizer, prompt and retriever."""

from __future__ import annotations

import pytest

from prm.data import make_data_source
from prm.data.qa_questions import QAQuestion
from prm.envs.protocol import COMPACT_TEMPLATE, EnvConfig, SearchEnv, format_question
from prm.envs.qa_data import QAExample
from prm.envs.retrieval import BM25Retriever, RetrievalServer
from prm.third_party.search_r1.data import write_search_r1_file
from tests.envs.retrieval.conftest import CORPUS
from tests.helpers.tiny_models import make_tiny_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def examples(split, n, source="nq"):
    return [
        QAExample(f"{source}/{split}/{i}", f"question {i} of {split}", (f"answer {i}",), source,
                  split, i)
        for i in range(n)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_r1")
    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(root / "tokenizer")
    write_search_r1_file(examples("train", 5), root / "nq.parquet")
    write_search_r1_file(examples("train", 2, "hotpotqa"), root / "hotpotqa.jsonl")
    write_search_r1_file(examples("test", 3), root / "test.parquet")
    return root


def block(files, **overrides):
    return {
        "name": "search_r1_questions",
        "batch_size": 3,
        "train_files": (str(files / "nq.parquet"), str(files / "hotpotqa.jsonl")),
        "eval_files": (str(files / "test.parquet"),),
        "tokenizer": str(files / "tokenizer"),
        "retriever_url": "http://127.0.0.1:1/retrieve",
        "template": "compact",
        "seed": 0,
        **overrides,
    }


def test_batches_visit_every_row_once_per_epoch_and_resume(files):
    source = make_data_source(block(files))
    epoch = next(source) + next(source)  # 7 questions: two batches of 3, the last one left out
    assert all(isinstance(q, QAQuestion) for q in epoch)
    assert len({q.id for q in epoch}) == 6
    assert {q.data_source for q in source.questions} == {"nq", "hotpotqa"}
    question = next(q for q in source.questions if q.id == "hotpotqa/train/1")
    assert (question.text, question.answers) == ("question 1 of train", ("answer 1",))
    saved = source.state()
    assert saved == {"epoch": 0, "index": 2}
    expected = next(source)  # a new epoch: the next batch would pass the end
    assert source.state() == {"epoch": 1, "index": 1}
    resumed = make_data_source(block(files))
    resumed.restore(saved)
    assert next(resumed) == expected


def test_eval_and_test_splits_read_the_eval_files(files):
    for split in ("eval", "test"):
        source = make_data_source(block(files), split=split)
        assert sorted(q.id for q in source.questions) == [f"nq/test/{i}" for i in range(3)]
        assert [e.uid for e in source.examples] == [q.id for q in source.questions]


def test_the_prompt_is_the_template_in_the_tokenizers_chat_template(files):
    source = make_data_source(block(files))
    assert source.template == COMPACT_TEMPLATE and source.tokenizer is source.assets.tokenizer
    env = SearchEnv(source.assets.retriever, EnvConfig(), source.tokenizer, source.template)
    (prompt,) = env.reset([source.examples[0]])
    content = COMPACT_TEMPLATE.format(question=format_question(source.examples[0].question))
    assert prompt == f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"


def test_the_retriever_is_a_client_of_the_retriever_url(files):
    with RetrievalServer(BM25Retriever(CORPUS), max_lifetime_s=60).start() as server:
        source = make_data_source(block(files, retriever_url=server.url))
        (passages,) = source.assets.retriever.retrieve(["capital of Germany"], 3)
    assert len(passages) == 3 and passages[0]["id"] == "1"


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"template": "chatml"}, ValueError, "Unknown data.template"),
        ({"tokenizer": ""}, ValueError, "set model.init_from"),
        ({"train_files": ()}, ValueError, "needs data.train_files"),
        ({"train_files": ("/nonexistent/train.parquet",)}, FileNotFoundError, "does not exist"),
        ({"batch_size": 8}, ValueError, "hold 7 questions, fewer than batch_size=8"),
    ],
)
def test_bad_blocks_say_what_to_change(files, overrides, error, message):
    with pytest.raises(error, match=message):
        make_data_source(block(files, **overrides))
