"""Search-R1's data schema: read its parquet files, and write prm data in the same form.

Upstream (`PeterGriffinJin/Search-R1` at `a14dc3a`, `scripts/data_process/qa_search_*_merge.py`;
notes: search_r1_stepsearch.md §1.7) stores one row per question:

    data_source:  "nq" | "hotpotqa" | …                 (selects the reward function upstream)
    prompt:       [{"role": "user", "content": <instruction + "Question: q?\\n">}]
    ability:      "fact-reasoning"
    reward_model: {"style": "rule", "ground_truth": {"target": [gold answers]}}
    extra_info:   {"split": "train" | "test", "index": <row index within its source>}
    + the FlashRAG columns kept by `datasets.map`: id, question, golden_answers

Differences from upstream, both additive (upstream readers ignore them):
- `extra_info.uid` holds a globally unique id. Upstream groups GRPO samples by
  `extra_info.index`, which restarts in every source, so questions from different sources
  share a group; prm groups by `uid`.
- The instruction text is prm's `SEARCH_R1_TEMPLATE` (same structure, our wording) unless the
  caller passes `template=protocol.SEARCH_R1_UPSTREAM_TEMPLATE`, upstream's string.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prm.envs import protocol
from prm.envs.qa_data import QAExample, load_search_r1_files

ABILITY = "fact-reasoning"


def to_search_r1_row(
    example: QAExample, index: int, template: str = protocol.SEARCH_R1_TEMPLATE
) -> dict[str, Any]:
    """`example` as an upstream row; `index` is its position within its source and split."""
    return {
        "id": example.uid,
        "question": example.question,
        "golden_answers": list(example.golden_answers),
        "data_source": example.data_source,
        "prompt": [{"role": "user", "content": protocol.render_prompt(example.question, template)}],
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": {"target": list(example.golden_answers)}},
        "extra_info": {"split": example.split, "index": index, "uid": example.uid},
    }


def to_search_r1_rows(
    examples: Iterable[QAExample], template: str = protocol.SEARCH_R1_TEMPLATE
) -> list[dict[str, Any]]:
    """Upstream rows, with `extra_info.index` counted per (source, split) as upstream does."""
    counters: Counter[tuple[str, str]] = Counter()
    rows = []
    for example in examples:
        key = (example.data_source, example.split)
        rows.append(to_search_r1_row(example, counters[key], template))
        counters[key] += 1
    return rows


def write_search_r1_file(
    examples: Sequence[QAExample],
    path: str | os.PathLike[str],
    template: str = protocol.SEARCH_R1_TEMPLATE,
) -> None:
    """Writes upstream rows to `.parquet` (what Search-R1's trainer reads) or `.jsonl`."""
    rows = to_search_r1_rows(examples, template)
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    else:
        raise ValueError(f"{path}: write .parquet or .jsonl, got {path.suffix!r}.")


def load_search_r1_file(path: str | os.PathLike[str]) -> list[QAExample]:
    """Reads an upstream `train.parquet` / `test.parquet` (or a file written here)."""
    return load_search_r1_files(path)
