"""Greedy QA evaluation with real multi-turn rollouts: EM/F1 per question type or benchmark.

    records = evaluate_policy(model, tokenizer, retriever, examples, env_config)
    tables = {"policy": summarize(records), "expert": summarize(expert_records(...))}
    write_tables(tables, workdir, "qa_test_step600")     # .md and .csv

EM and F1 follow Search-R1 / SQuAD normalisation (`prm.metrics.qa`; search_r1_stepsearch.md §4):
the answer is the content of the episode's `<answer>` block, EM = max over gold answers of the
exact match of normalised strings, F1 the token-level F1, and an episode without an answer
scores 0. Decoding is greedy (SLATE §2.8), so a table is a deterministic function of the model,
retriever and questions. Groups are the examples' `data_source` (the synthetic world's question
types are `synthetic_<type>`; real benchmarks keep their names), plus an `all` row over every
question.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prm.envs.assets import load_world_assets, world_config_from
from prm.envs.expert import WORLD_ENV_CONFIG, ExpertConfig, generate_demonstrations
from prm.envs.protocol import COMPACT_TEMPLATE, EnvConfig, SearchEnv, TextTokenizer
from prm.envs.qa_data import QAExample
from prm.envs.retrieval.base import Retriever
from prm.envs.synthetic_world import Question, World
from prm.models import Transformer
from prm.rollouts import DEFAULT_ROLLOUT, EpisodeEnd, RolloutConfig, rollout
from prm.sampling import Sampler

ALL = "all"


def evaluate_policy(
    model: Transformer,
    tokenizer: TextTokenizer,
    retriever: Retriever,
    examples: Sequence[QAExample],
    env_config: EnvConfig,
    rollout_config: RolloutConfig = DEFAULT_ROLLOUT,
    template: str = COMPACT_TEMPLATE,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """One record per example: uid, data_source, question, answer, em, f1, turns, finish.

    Episodes run greedily in batches of `batch_size` (`rollout_config.sampling` must be greedy).
    """
    if not rollout_config.sampling.greedy:
        raise ValueError("evaluate_policy decodes greedily: pass RolloutConfig(sampling=GREEDY).")
    if rollout_config.group_size != 1:
        raise ValueError("evaluate_policy plays each example once: pass group_size=1.")
    if not examples:
        raise ValueError("evaluate_policy: no examples to evaluate.")
    sampler = Sampler(model, pad_token_id=tokenizer.pad_token_id)
    env = SearchEnv(retriever, env_config, tokenizer, template)
    records = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = rollout(sampler, env, tokenizer, chunk, rollout_config)
        for b, example in enumerate(chunk):
            records.append(
                {
                    "uid": example.uid,
                    "data_source": example.data_source,
                    "question": example.question,
                    "answer": batch.answers[b],
                    "em": float(batch.em[b]),
                    "f1": float(batch.f1[b]),
                    "turns": int(batch.num_turns[b]),
                    "finish": EpisodeEnd(int(batch.finish_reason[b])).name.lower(),
                }
            )
    return records


def expert_records(
    world: World,
    questions: Sequence[Question],
    retriever: Retriever,
    expert_config: ExpertConfig,
    env_config: EnvConfig,
    tokenizer: TextTokenizer | None = None,
    template: str = COMPACT_TEMPLATE,
) -> list[dict[str, Any]]:
    """The noisy expert's records on `questions`, with the same retriever and env as a policy."""
    demos = generate_demonstrations(
        world, questions, retriever, expert_config, env_config, tokenizer, template
    )
    return [
        {
            "uid": d.question.id,
            "data_source": f"synthetic_{d.question.qtype}",
            "question": d.question.text,
            "answer": d.answer,
            "em": d.em,
            "f1": d.f1,
            "turns": sum(s.trainable for s in d.segments),
            "finish": "answer" if d.answer is not None else "no_answer",
        }
        for d in demos
    ]


def summarize(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean EM/F1 per `data_source` (sorted), then the `all` row: {group, n, em, f1}."""
    if not records:
        raise ValueError("summarize: no records.")
    groups: dict[str, list[Mapping[str, Any]]] = collections.defaultdict(list)
    for record in records:
        groups[record["data_source"]].append(record)
    groups[ALL] = list(records)
    return [
        {
            "group": name,
            "n": len(rows),
            "em": sum(r["em"] for r in rows) / len(rows),
            "f1": sum(r["f1"] for r in rows) / len(rows),
        }
        for name, rows in sorted(groups.items(), key=lambda kv: (kv[0] == ALL, kv[0]))
    ]


def _wide_rows(tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> tuple[list[str], list[list]]:
    """Joins summaries side by side: group, n, then EM and F1 of each table."""
    if not tables:
        raise ValueError("Need at least one table.")
    by_name = {name: {row["group"]: row for row in rows} for name, rows in tables.items()}
    groups = [row["group"] for row in next(iter(tables.values()))]
    for name, rows in by_name.items():
        if set(rows) != set(groups):
            raise ValueError(
                f"Table {name!r} has groups {sorted(rows)}, expected {sorted(groups)}: "
                "summarize every agent on the same questions."
            )
    first = next(iter(by_name.values()))
    header = ["group", "n"] + [f"{name} {m}" for name in tables for m in ("EM", "F1")]
    body = [
        [group, first[group]["n"]]
        + [by_name[name][group][m] for name in tables for m in ("em", "f1")]
        for group in groups
    ]
    return header, body


def format_markdown(tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """A markdown table: one row per group, EM and F1 (3 decimals) per named summary."""
    header, body = _wide_rows(tables)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for row in body:
        cells = [str(row[0]), str(row[1])] + [f"{v:.3f}" for v in row[2:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_csv(tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    header, body = _wide_rows(tables)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([h.replace(" ", "_") for h in header])
    writer.writerows(body)
    return out.getvalue()


def write_tables(
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    directory: str | os.PathLike[str],
    name: str,
) -> tuple[Path, Path]:
    """Writes `<directory>/<name>.md` and `<name>.csv`; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / f"{name}.md", directory / f"{name}.csv"
    for path, text in zip(paths, (format_markdown(tables), format_csv(tables))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return paths


def evaluate_world(
    model: Transformer,
    world: World,
    tokenizer: TextTokenizer,
    retriever: Retriever,
    split: str,
    env_config: EnvConfig,
    rollout_config: RolloutConfig = DEFAULT_ROLLOUT,
    expert_config: ExpertConfig | None = None,
    max_questions: int = 0,
    batch_size: int = 64,
) -> dict[str, list[dict[str, Any]]]:
    """Summaries of the policy (and, given `expert_config`, the noisy expert with the same
    retriever and turn budget) on a world split.

    `max_questions` > 0 keeps the split's first questions only (a fixed subset, for quick evals).
    """
    questions = world.split(split)
    if max_questions > 0:
        questions = questions[:max_questions]
    examples = [
        QAExample(q.id, q.text, q.answers, f"synthetic_{q.qtype}", split, i)
        for i, q in enumerate(questions)
    ]
    tables = {
        "policy": summarize(
            evaluate_policy(
                model,
                tokenizer,
                retriever,
                examples,
                env_config,
                rollout_config,
                batch_size=batch_size,
            )
        )
    }
    if expert_config is not None:
        # The expert writes whole <answer> blocks, so it plays without the forced answer opening.
        expert_env = dataclasses.replace(env_config, forced_answer=None)
        tables["expert"] = summarize(
            expert_records(world, questions, retriever, expert_config, expert_env, tokenizer)
        )
    return tables


def evaluation_episodes(
    base_env: EnvConfig, data: Mapping[str, Any], qa: Mapping[str, Any]
) -> tuple[EnvConfig, RolloutConfig]:
    """The episodes of a run's greedy evaluation: `data["env"]`'s fields over `base_env`, with
    `qa["forced_answer"]` ("": none) before the final call, and steps of at most
    `qa["max_step_tokens"]` tokens in `data["seq_len"]`."""
    env = dataclasses.replace(
        base_env, **{**dict(data["env"]), "forced_answer": qa["forced_answer"] or None}
    )
    return env, RolloutConfig(max_step_tokens=qa["max_step_tokens"], max_length=data["seq_len"])


def evaluate_world_config(
    model: Transformer, data: Mapping[str, Any], qa: Mapping[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """`evaluate_world` set up from a run config's `data` block (a "synthetic_demos" source:
    world, cache_dir, vocab_size, seq_len, env, expert) and its `eval.qa` block (split,
    max_questions, batch_size, max_step_tokens, forced_answer, expert)."""
    assets = load_world_assets(
        world_config_from(data["world"]), data["cache_dir"] or None, data["vocab_size"]
    )
    env, rollout_config = evaluation_episodes(WORLD_ENV_CONFIG, data, qa)
    return evaluate_world(
        model,
        assets.world,
        assets.tokenizer,
        assets.retriever,
        qa["split"],
        env,
        rollout_config,
        ExpertConfig(**dict(data["expert"])) if qa["expert"] else None,
        max_questions=qa["max_questions"],
        batch_size=qa["batch_size"],
    )


def evaluate_dataset_config(
    model: Transformer, data: Mapping[str, Any], qa: Mapping[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """The policy's table on a "search_r1_questions" source's `qa["split"]` (its `eval_files`;
    the first `qa["max_questions"]`, 0: all), played with the source's tokenizer, retriever and
    prompt and the episodes of `data` and `qa` (`evaluation_episodes` over `EnvConfig()`)."""
    from prm.data import make_data_source  # noqa: PLC0415 - the data package imports envs

    source = make_data_source(data, split=qa["split"])
    env, rollout_config = evaluation_episodes(EnvConfig(), data, qa)
    records = evaluate_policy(
        model,
        source.assets.tokenizer,
        source.assets.retriever,
        source.examples[: qa["max_questions"] or None],
        env,
        rollout_config,
        template=source.template,
        batch_size=qa["batch_size"],
    )
    return {"policy": summarize(records)}


def qa_metrics(
    model: Transformer,
    data: Mapping[str, Any],
    qa: Mapping[str, Any],
    workdir: str | os.PathLike[str],
    step: int,
) -> dict[str, float]:
    """What a trainer's `evaluate` logs for its question source `data["name"]`: greedy EM/F1
    per group on a Search-R1 dataset's eval files ("search_r1_questions",
    `evaluate_dataset_config`) or on the synthetic world's split (any other source,
    `evaluate_world_config`), as `flatten_tables` scalars; the tables are written to
    `workdir/qa_<split>_step<step>.{md,csv}` (process 0)."""
    import jax  # noqa: PLC0415 - keep this module importable without initialising JAX

    if data["name"] == "search_r1_questions":
        tables = evaluate_dataset_config(model, data, qa)
    else:
        tables = evaluate_world_config(model, data, qa)
    if jax.process_index() == 0:
        write_tables(tables, workdir, f"qa_{qa['split']}_step{step}")
    return flatten_tables(tables)


def flatten_tables(
    tables: Mapping[str, Sequence[Mapping[str, Any]]], prefix: str = "qa"
) -> dict[str, float]:
    """Scalar metrics `{prefix}/{agent}/{group}/{n|em|f1}` (what a train loop logs)."""
    return {
        f"{prefix}/{agent}/{row['group']}/{field}": float(row[field])
        for agent, rows in tables.items()
        for row in rows
        for field in ("n", "em", "f1")
    }


def tables_from_metrics(
    metrics: Mapping[str, float], prefix: str = "qa"
) -> dict[str, list[dict[str, Any]]]:
    """Inverse of `flatten_tables` (other keys are ignored); groups keep `summarize`'s order."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) != 4 or parts[0] != prefix:
            continue
        _, agent, group, field = parts
        row = rows.setdefault(agent, {}).setdefault(group, {"group": group})
        row[field] = int(value) if field == "n" else value
    return {
        agent: sorted(groups.values(), key=lambda r: (r["group"] == ALL, r["group"]))
        for agent, groups in rows.items()
    }
