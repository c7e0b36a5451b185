"""Questions of Search-R1 / FlashRAG data files, a batch per RL step, with what plays them.

    source = make_data_source(dict(name="search_r1_questions", batch_size=32,
                                   train_files=("train.parquet",), tokenizer="<hf dir>",
                                   retriever_url="http://127.0.0.1:8000/retrieve"), "train")
    questions = next(source)        # this host's `QAQuestion`s of the next batch
    source.state()                  # {"epoch": 0, "index": 1}: saved with each checkpoint

The batches follow the world's question source (`prm.data.questions`): each epoch visits every
question once in an order fixed by (seed, epoch), so a resumed run sees exactly the questions an
uninterrupted run would. Besides its questions, a source carries what an RL trainer
(`prm.trainers.rl.WorldRLTrainer`) needs to play them: `assets.tokenizer` (the policy's HF
tokenizer; its chat template wraps the prompt), `assets.retriever` (a client of a Search-R1
retriever server, `prm.envs.retrieval.RetrievalClient`) and the instruction `template`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from prm.data.source import QuestionBatches
from prm.envs.protocol import (
    COMPACT_TEMPLATE,
    SEARCH_R1_TEMPLATE,
    SEARCH_R1_UPSTREAM_TEMPLATE,
    TextTokenizer,
)
from prm.envs.qa_data import QAExample, load_search_r1_files
from prm.envs.retrieval import RetrievalClient, Retriever
from prm.registry import DATASETS

# Trainer split name -> the files it reads.
SPLIT_FILES = {"train": "train_files", "eval": "eval_files", "test": "eval_files"}
# `data.template` -> the instruction prompt.
TEMPLATES = {
    "search_r1": SEARCH_R1_TEMPLATE,
    "search_r1_upstream": SEARCH_R1_UPSTREAM_TEMPLATE,
    "compact": COMPACT_TEMPLATE,
}


@dataclasses.dataclass(frozen=True)
class QAQuestion:
    """A dataset question with the fields RL trainers read from a world `Question`."""

    id: str  # the example's unique id (`QAExample.uid`)
    text: str
    answers: tuple[str, ...]
    data_source: str  # e.g. "nq", "hotpotqa": the group of evaluation tables

    @classmethod
    def from_example(cls, example: QAExample) -> QAQuestion:
        return cls(example.uid, example.question, example.golden_answers, example.data_source)


@dataclasses.dataclass(frozen=True)
class QAAssets:
    """What plays a dataset's questions: the policy's tokenizer and the retriever."""

    tokenizer: TextTokenizer
    retriever: Retriever


def load_tokenizer(path: str) -> Any:
    """The Hugging Face tokenizer saved in `path` (a local directory; nothing is downloaded)."""
    if not path:
        raise ValueError(
            "The Search-R1 question source needs the policy's tokenizer: set model.init_from "
            "(data.tokenizer follows it) or data.tokenizer to a local Hugging Face directory."
        )
    import transformers  # slow to import; only this source needs it

    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"The tokenizer in {path} has no pad token; set one and save it again.")
    return tokenizer


@DATASETS.register("search_r1_questions")
class SearchR1QuestionSource(QuestionBatches):
    """Batches of `batch_size` (global) questions of Search-R1 / FlashRAG rows, played with the
    policy's HF tokenizer and a Search-R1 retriever server (SLATE §5 / Search-R1's setup).

    `train_files` (split "train") and `eval_files` (splits "eval" and "test") are parquet,
    jsonl or json files of Search-R1 rows (`prm.envs.qa_data.load_search_r1_files`; uids are
    made unique across files). `tokenizer` is a local HF directory: its chat template, when it
    has one, wraps the prompt (`prm.envs.protocol.render_prompt`). `retriever_url` is a server
    speaking `POST /retrieve` (Search-R1's `retrieval_server.py` or `prm.envs.retrieval.server`);
    the env asks it for `env.topk` passages per query. `template` names the instruction prompt
    (`TEMPLATES`). `seq_len` and `env` describe the episodes for the trainer and its evaluation.
    """

    def __init__(
        self,
        batch_size: int,
        train_files: Sequence[str] = (),
        eval_files: Sequence[str] = (),
        tokenizer: str = "",
        retriever_url: str = "http://127.0.0.1:8000/retrieve",
        template: str = "search_r1",
        seed: int = 0,
        seq_len: int = 4096,
        env: Mapping[str, Any] | None = None,
        split: str = "train",
        process_index: int = 0,
        process_count: int = 1,
    ):
        del seq_len, env
        if template not in TEMPLATES:
            raise ValueError(f"Unknown data.template {template!r}; use one of {sorted(TEMPLATES)}.")
        if split not in SPLIT_FILES:
            raise ValueError(f"Unknown split {split!r}; valid splits are {sorted(SPLIT_FILES)}.")
        which = SPLIT_FILES[split]
        files = train_files if split == "train" else eval_files
        if not files:
            raise ValueError(f"The {split} split needs data.{which} (Search-R1 parquet/jsonl).")
        for path in files:
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"data.{which}: {path} does not exist; point it at Search-R1 data files "
                    "(made by upstream's data_process scripts, or by "
                    "prm.third_party.search_r1.write_search_r1_file)."
                )
        self.examples = load_search_r1_files(list(files))
        self.questions = [QAQuestion.from_example(e) for e in self.examples]
        if len(self.questions) < batch_size:
            raise ValueError(
                f"{', '.join(files)} hold {len(self.questions)} questions, fewer than "
                f"batch_size={batch_size}; lower data.batch_size."
            )
        self.template = TEMPLATES[template]
        self.assets = QAAssets(load_tokenizer(tokenizer), RetrievalClient(retriever_url))
        self._start(batch_size, seed, process_index, process_count)

    @property
    def tokenizer(self):
        """The policy's tokenizer (saved with the trained policy's HF export)."""
        return self.assets.tokenizer
