"""Question-answering data: Search-R1 / FlashRAG rows, the seven benchmarks, unique prompt ids.

Every loader returns `QAExample`s. Two row schemas are understood:

* **Search-R1 / FlashRAG rows** (search_r1_stepsearch.md §1.7), from parquet or jsonl:
  `question`, `golden_answers` (or `reward_model.ground_truth.target`), `data_source`, and
  optionally `id`, `extra_info.split`, `extra_info.index`. `data_source` may be supplied by the
  caller when a file holds one source (FlashRAG files do not carry it).
* **The benchmarks' own schemas**, by name (`BENCHMARKS`), read with `datasets.load_dataset`
  from the Hub or from local files (`data_files=`):

    name             original release (Hub id)              question   gold answers
    nq               google-research-datasets/nq_open       question   answer (a list)
    triviaqa         mandarjoshi/trivia_qa, rc.nocontext    question   answer.value + .aliases
    popqa            akariasai/PopQA                        question   possible_answers (JSON)
    hotpotqa         hotpotqa/hotpot_qa, distractor         question   answer
    2wikimultihopqa  not on the Hub: its JSON files         question   answer
    musique          not on the Hub: its JSONL files        question   answer + answer_aliases
    bamboogle        chiayewken/bamboogle                   Question   Answer

  With `schema="flashrag"` every benchmark is read from `RUC-NLPIR/FlashRAG_datasets`, config =
  the name (the data Search-R1 was built from: `id`, `question`, `golden_answers`). Field names
  follow the dataset cards; nothing is downloaded in tests.

Unique ids: Search-R1 groups GRPO samples by `extra_info.index`, which restarts at 0 in every
source, so NQ row i and HotpotQA row i collide (§1.7). Here every example gets
`uid = "{data_source}/{split}/{id or index}"`, made unique across everything loaded together.

A row without a required field raises one error naming the file, the row and the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class QAExample:
    uid: str  # unique over everything loaded together
    question: str
    golden_answers: tuple[str, ...]
    data_source: str
    split: str
    index: int  # row index within its file or dataset split
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class MissingFieldError(ValueError):
    """A row lacks a field the loader needs."""


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a `.parquet`, `.jsonl` or `.json` (a list of objects) file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for line_number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{line_number}: not valid JSON ({e.msg}).") from e
        return rows
    if suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError(f"{path}: a .json file must hold a list of rows.")
        return rows
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .parquet, .jsonl or .json.")


def _field(row: Mapping[str, Any], dotted: str) -> Any:
    value: Any = row
    for key in dotted.split("."):
        if not isinstance(value, Mapping) or key not in value or value[key] is None:
            raise KeyError(dotted)
        value = value[key]
    return value


def _first_field(row: Mapping[str, Any], names: Sequence[str], where: str) -> Any:
    for name in names:
        try:
            return _field(row, name)
        except KeyError:
            continue
    raise MissingFieldError(
        f"{where}: missing field {' or '.join(repr(n) for n in names)} (row keys: {sorted(row)})."
    )


def _answer_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    answers = tuple(str(a) for a in value)
    if not answers:
        raise MissingFieldError(f"{where}: the gold answer list is empty.")
    return answers


def search_r1_example(
    row: Mapping[str, Any],
    index: int,
    where: str,
    data_source: str | None = None,
    split: str | None = None,
) -> QAExample:
    """One Search-R1 / FlashRAG row as a `QAExample` (uid is made unique by the caller).

    `data_source` and `split` fill in for rows that lack `data_source` / `extra_info.split`.
    """
    question = _first_field(row, ["question"], where)
    answers = _answer_list(
        _first_field(row, ["golden_answers", "reward_model.ground_truth.target"], where), where
    )
    source = row.get("data_source") or data_source
    if not source:
        raise MissingFieldError(
            f"{where}: missing field 'data_source' (or pass data_source= for single-source files)."
        )
    extra = row.get("extra_info") or {}
    if isinstance(extra, Mapping) and extra.get("split"):
        split = str(extra["split"])
    split = split or ""
    row_id = row.get("id")
    if row_id is None and isinstance(extra, Mapping):
        row_id = extra.get("index")
    uid = f"{source}/{split}/{index if row_id is None else row_id}"
    if isinstance(extra, Mapping) and extra.get("uid"):
        uid = str(extra["uid"])  # written by prm.third_party.search_r1.data
    metadata = {k: v for k, v in row.items() if k not in ("question", "golden_answers")}
    return QAExample(
        uid=uid,
        question=str(question),
        golden_answers=answers,
        data_source=str(source),
        split=split,
        index=index,
        metadata=metadata,
    )


def unique_ids(examples: Sequence[QAExample]) -> list[QAExample]:
    """Appends '#k' to the k-th repeat of a uid (k >= 1), so every uid is distinct."""
    counts = Counter(e.uid for e in examples)
    seen: Counter[str] = Counter()
    taken = set(counts)
    out = []
    for example in examples:
        uid = example.uid
        if counts[uid] > 1:
            seen[uid] += 1
            if seen[uid] > 1:
                candidate, k = f"{uid}#{seen[uid] - 1}", seen[uid] - 1
                while candidate in taken:
                    k += 1
                    candidate = f"{uid}#{k}"
                taken.add(candidate)
                uid = candidate
        out.append(dataclasses.replace(example, uid=uid))
    return out


def load_search_r1_files(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    data_source: str | None = None,
) -> list[QAExample]:
    """Search-R1 / FlashRAG rows from parquet/jsonl files, with uids unique across all files."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    examples = []
    for path in paths:
        for i, row in enumerate(read_rows(path)):
            examples.append(search_r1_example(row, i, f"{path}, row {i}", data_source))
    return unique_ids(examples)


def _json_list(value: Any) -> list[str]:
    return json.loads(value) if isinstance(value, str) else list(value)


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives on the Hub and how its own rows map to a `QAExample`."""

    flashrag_config: str
    hub_path: str | None  # None: the original release is not on the Hub; pass data_files
    hub_config: str | None
    question_field: str
    answers: Callable[[Mapping[str, Any]], list[str]]
    answer_fields: tuple[str, ...]
    id_fields: tuple[str, ...] = ("id",)


BENCHMARKS: dict[str, Benchmark] = {
    "nq": Benchmark(
        "nq", "google-research-datasets/nq_open", None, "question",
        lambda r: list(r["answer"]), ("answer",),
    ),
    "triviaqa": Benchmark(
        "triviaqa", "mandarjoshi/trivia_qa", "rc.nocontext", "question",
        lambda r: [r["answer"]["value"], *r["answer"].get("aliases", [])], ("answer.value",),
        ("question_id",),
    ),
    "popqa": Benchmark(
        "popqa", "akariasai/PopQA", None, "question",
        lambda r: _json_list(r["possible_answers"]), ("possible_answers",),
    ),
    "hotpotqa": Benchmark(
        "hotpotqa", "hotpotqa/hotpot_qa", "distractor", "question",
        lambda r: [r["answer"]], ("answer",),
    ),
    "2wikimultihopqa": Benchmark(
        "2wikimultihopqa", None, None, "question", lambda r: [r["answer"]], ("answer",), ("_id",),
    ),
    "musique": Benchmark(
        "musique", None, None, "question",
        lambda r: [r["answer"], *r.get("answer_aliases", [])], ("answer",),
    ),
    "bamboogle": Benchmark(
        "bamboogle", "chiayewken/bamboogle", None, "Question", lambda r: [r["Answer"]], ("Answer",),
    ),
}  # fmt: skip
FLASHRAG_HUB_PATH = "RUC-NLPIR/FlashRAG_datasets"


def load_benchmark(
    name: str,
    split: str,
    *,
    schema: str = "original",
    data_files: str | Sequence[str] | None = None,
    **load_kwargs: Any,
) -> list[QAExample]:
    """The benchmark `name` (a key of `BENCHMARKS`) as `QAExample`s.

    `schema="original"` reads the benchmark's own release, `"flashrag"` the FlashRAG copy.
    With `data_files`, local `.jsonl`/`.json`/`.parquet` files in that schema are read through
    `datasets.load_dataset` instead of the Hub (`split` then only labels the examples).
    """
    if name not in BENCHMARKS:
        raise KeyError(f"Unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}.")
    if schema not in ("original", "flashrag"):
        raise ValueError(f"schema must be 'original' or 'flashrag', got {schema!r}.")
    import datasets  # slow to import; only this loader needs it

    spec = BENCHMARKS[name]
    if data_files is not None:
        files = [data_files] if isinstance(data_files, str) else list(data_files)
        builder = "parquet" if all(f.endswith(".parquet") for f in files) else "json"
        rows = datasets.load_dataset(builder, data_files=files, split="train", **load_kwargs)
        origin = ", ".join(files)
    elif schema == "flashrag":
        rows = datasets.load_dataset(
            FLASHRAG_HUB_PATH, spec.flashrag_config, split=split, **load_kwargs
        )
        origin = f"{FLASHRAG_HUB_PATH}/{spec.flashrag_config} [{split}]"
    elif spec.hub_path is None:
        raise ValueError(
            f"{name}: the original release is not on the Hugging Face Hub; pass data_files= "
            "(its JSON files) or use schema='flashrag'."
        )
    else:
        rows = datasets.load_dataset(spec.hub_path, spec.hub_config, split=split, **load_kwargs)
        origin = f"{spec.hub_path} [{split}]"

    examples = []
    for i, row in enumerate(rows):
        where = f"{origin}, row {i}"
        if schema == "flashrag":
            examples.append(search_r1_example(row, i, where, data_source=name, split=split))
            continue
        question = _first_field(row, [spec.question_field], where)
        for field in spec.answer_fields:
            _first_field(row, [field], where)
        row_id = next((row[f] for f in spec.id_fields if row.get(f) is not None), i)
        examples.append(
            QAExample(
                uid=f"{name}/{split}/{row_id}",
                question=str(question),
                golden_answers=_answer_list(spec.answers(row), where),
                data_source=name,
                split=split,
                index=i,
                metadata={k: v for k, v in row.items() if k != spec.question_field},
            )
        )
    return unique_ids(examples)


def world_examples(rows: Iterable[Mapping[str, Any]], split: str) -> list[QAExample]:
    """`World.question_rows(split)` as `QAExample`s (uids are the world's question ids)."""
    return unique_ids(
        [
            search_r1_example(row, i, f"synthetic world [{split}], row {i}", split=split)
            for i, row in enumerate(rows)
        ]
    )
