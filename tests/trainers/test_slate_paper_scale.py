"""`configs/slate.py:model=qwen2.5-3b` end to end on loopback: a tiny HF checkpoint with a chat
template, Search-R1 parquet rows, a Search-R1 retriever server and an OpenAI-compatible judge.

The paper option is run as typed (`python -m experiments.train`), with overrides that point it at
the local pieces and shrink it to 2 steps; the architecture comes from the checkpoint's
config.json (`model.init_from`), so the Qwen2.5-3B shape in the config is not built. LoRA, the
LoRA-off reference, the HTTP judge, the retriever client and the chat template are the paper
option's own, and so is remat (LoRA adapters' gradients through `jax.checkpoint`ed layers);
float32 keeps XLA's CPU compile short (bfloat16 decode takes minutes). SLATE pads a step's rows to
a multiple of batch_size × k = 4 (4 or 8 here), so micro-batches are 4 rows, not the option's 8.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from prm.envs.qa_data import QAExample
from prm.envs.retrieval import BM25Retriever, RetrievalServer
from prm.third_party.search_r1.data import write_search_r1_file
from tests.envs.retrieval.conftest import CORPUS
from tests.helpers.tiny_models import make_tiny_checkpoint
from tests.judges import test_http

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# ChatML, as Qwen2.5's tokenizer wraps a user message (its system message left out).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QUESTIONS = [
    ("What is the capital of Germany", ["Berlin"], "nq"),
    ("Which river flows through Peru", ["Amazon", "Amazon River"], "nq"),
    ("Who created the Python programming language", ["Guido"], "hotpotqa"),
    ("Which Curie won Nobel prizes in physics and chemistry", ["Marie Curie"], "hotpotqa"),
]


class RecordingRetriever(BM25Retriever):
    """BM25 over the test corpus that keeps every query it is asked."""

    def __init__(self):
        super().__init__(CORPUS)
        self.queries = []

    def retrieve(self, queries, topk):
        self.queries.extend(queries)
        return super().retrieve(queries, topk)


def write_rows(path, split):
    examples = [
        QAExample(f"{source}/{split}/{i}", question, tuple(answers), source, split, i)
        for i, (question, answers, source) in enumerate(QUESTIONS)
    ]
    write_search_r1_file(examples, path)
    return str(path)


@pytest.fixture
def checkpoint(tmp_path):
    import transformers

    path = make_tiny_checkpoint(tmp_path, "qwen2", max_position_embeddings=1024)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow
def test_paper_option_trains_and_evaluates_against_local_servers(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setattr(test_http, "MAX_STUB_LIFETIME_S", 1200.0)  # the run starts JAX first
    judge = test_http.ChatStub()
    served = RecordingRetriever()
    retriever = RetrievalServer(served, max_lifetime_s=1200).start()
    train = write_rows(tmp_path / "train.parquet", "train")
    test = write_rows(tmp_path / "test.parquet", "test")
    workdir = tmp_path / "run"
    try:
        result = subprocess.run(
            [
                sys.executable, "-m", "experiments.train",
                f"--config=configs/slate.py:model=qwen2.5-3b,init_from={checkpoint},"
                "action_choice=constrained,k=2,budget=2",
                "--config.data.batch_size=2",
                f"--config.data.train_files=('{train}',)",
                f"--config.data.eval_files=('{test}',)",
                f"--config.data.retriever_url={retriever.url}",
                "--config.data.template=compact",
                "--config.data.seq_len=512",
                "--config.data.env.max_obs_tokens=64",
                f"--config.judge.base_url={judge.base_url}",
                "--config.rollout.max_step_tokens=6",
                "--config.total_steps=2",
                "--config.optim.warmup_steps=0",
                "--config.eval_every=2",
                "--config.eval.qa.max_questions=2",
                "--config.eval.qa.max_step_tokens=6",
                "--config.model.dtype=float32",
                "--config.model.param_dtype=float32",
                "--config.model.remat=True",
                "--config.updates.micro_batch_size=4",
                "--config.progress=False",
                f"--workdir={workdir}",
            ],
            cwd=ROOT, capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
    finally:
        retriever.shutdown()
        judge.close()
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].startswith("held-out EM:")
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [1, 2]
    # Constrained decoding always writes an action, so every sibling reached the judge stub.
    for record in train_records:
        assert record["invalid_sibling_fraction"] == 0.0
        assert record["judge_stats/requests"] > 0 and record["judge/candidates"] > 0
        # The stub scores every query −1 and every answer 0.
        assert record.get("judge/query", -1.0) == -1.0
        assert record.get("judge/answer", 0.0) == 0.0
    # The retriever served the policy's queries, and the judge read the questions and the
    # passages of the chosen searches.
    assert served.queries
    prompts = [r["messages"][-1]["content"] for r in judge.requests]
    assert any(question in p for p in prompts for question, _, _ in QUESTIONS)
    assert any("Doc 1(Title:" in p for p in prompts), "no retrieved passage reached the judge"
    evaluation = next(r for r in records if "eval/qa/policy/all/n" in r)
    assert evaluation["eval/qa/policy/all/n"] == 2
    assert (workdir / "qa_test_step2.md").exists()
    assert (workdir / "hf" / "tokenizer_config.json").exists()
