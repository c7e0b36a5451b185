"""Chain arithmetic mod 10: a small multi-step task whose every step can be checked exactly.

A problem is a start digit and a list of operations on digits, applied left to right mod 10:

    prompt    "3 | 1:+4 2:*7 3:-2\\n"
    solution  "1: 3+4=7\\n"  "2: 7*7=9\\n"  "3: 9-2=7\\n"  "Answer: 7\\n"

Each line is one policy step and ends with "\\n" (the env's only stop string); the episode ends
with the "Answer:" line. Line k restates operation k of the prompt, so a small transformer can
find it by matching "k:" (an induction pattern) and copy the previous line's result.

Why it suits process labels (Math-Shepherd, OmegaPRM): the true correctness of every step is
known, and the outcome does not determine it. A wrong intermediate digit can still reach the
gold answer because arithmetic mod 10 loses information: ×0 erases any error, ×5 keeps only the
parity and ×2, ×4, ×6, ×8 cannot tell v from v + 5. So MC labels from completions carry false
positives exactly as on real math, and their accuracy can be measured against the truth.

True step correctness (`step_correctness`) is prefix correctness: step t is correct iff lines
1..t all equal the gold solution's lines (as parsed, spaces ignored). Steps after the first
error are incorrect even when their own arithmetic is right, as in PRM800K and OmegaPRM's
"first error" labels.

Splits are disjoint by construction: a problem belongs to the split its prompt hashes to
(`split_of`: 10% test, 10% dev, 80% train), and `generate_problems` keeps only problems of the
split asked for. Text only (no models, DESIGN.md); `ChainArithmeticEnv` implements
`prm.rollouts.Env`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from prm.envs.protocol import Action, StepResult, truncate_at_stop

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

STEP_END = "\n"
ANSWER_PREFIX = "Answer:"
OPERATORS = "+-*"
SPLITS = ("train", "dev", "test")
MAX_OPS = 9  # line numbers are single digits

END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<unk>"
# Every character the task's text uses; anything else tokenizes to <unk>.
ALPHABET = "0123456789+-*=:| \nAnswer"
CHAIN_VOCAB_SIZE = 32  # model vocabulary: the tokenizer's 26 ids padded to a multiple of 8


def apply_op(value: int, op: str, operand: int) -> int:
    """(value op operand) mod 10."""
    if op == "+":
        return (value + operand) % 10
    if op == "-":
        return (value - operand) % 10
    if op == "*":
        return (value * operand) % 10
    raise ValueError(f"Unknown operator {op!r}; valid operators are {OPERATORS!r}.")


@dataclasses.dataclass(frozen=True)
class ChainProblem:
    """A start digit and operations `((op, operand), ...)`, applied left to right mod 10."""

    start: int
    ops: tuple[tuple[str, int], ...]

    def __post_init__(self):
        if not 0 <= self.start <= 9:
            raise ValueError(f"start must be a digit 0..9, got {self.start}.")
        if not 1 <= len(self.ops) <= MAX_OPS:
            raise ValueError(f"A problem needs 1..{MAX_OPS} operations, got {len(self.ops)}.")
        for op, operand in self.ops:
            if op not in OPERATORS or not 0 <= operand <= 9:
                raise ValueError(
                    f"Each operation is (op in {OPERATORS!r}, digit 0..9); got {(op, operand)}."
                )

    @property
    def num_ops(self) -> int:
        return len(self.ops)

    @property
    def values(self) -> tuple[int, ...]:
        """v_0 = start, v_k = v_{k-1} op_k b_k mod 10 (k = 1..n)."""
        values = [self.start]
        for op, operand in self.ops:
            values.append(apply_op(values[-1], op, operand))
        return tuple(values)

    @property
    def answer(self) -> int:
        return self.values[-1]

    @property
    def prompt(self) -> str:
        ops = " ".join(f"{k}:{op}{b}" for k, (op, b) in enumerate(self.ops, 1))
        return f"{self.start} | {ops}{STEP_END}"

    def gold_steps(self) -> tuple[str, ...]:
        """The n operation lines and the answer line, each ending with "\\n"."""
        values = self.values
        lines = [
            format_op_step(k, values[k - 1], op, b, values[k])
            for k, (op, b) in enumerate(self.ops, 1)
        ]
        return (*lines, format_answer_step(self.answer))


def format_op_step(index: int, lhs: int, op: str, operand: int, result: int) -> str:
    return f"{index}: {lhs}{op}{operand}={result}{STEP_END}"


def format_answer_step(answer: int) -> str:
    return f"{ANSWER_PREFIX} {answer}{STEP_END}"


@dataclasses.dataclass(frozen=True)
class ChainConfig:
    """Problem distribution: the number of operations is uniform in [min_ops, max_ops]; the
    start, operators (from `operators`) and operands are uniform."""

    min_ops: int = 2
    max_ops: int = 6
    operators: str = OPERATORS

    def __post_init__(self):
        if not 1 <= self.min_ops <= self.max_ops <= MAX_OPS:
            raise ValueError(
                f"Need 1 <= min_ops <= max_ops <= {MAX_OPS}, got {self.min_ops}, {self.max_ops}."
            )
        if not self.operators or set(self.operators) - set(OPERATORS):
            raise ValueError(f"operators must be a non-empty subset of {OPERATORS!r}.")


def split_of(problem: ChainProblem) -> str:
    """The split a problem belongs to, from a hash of its prompt: 10% test, 10% dev, 80% train."""
    bucket = int(hashlib.sha256(problem.prompt.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def generate_problems(
    num: int, *, seed: int = 0, split: str = "train", config: ChainConfig = ChainConfig()
) -> list[ChainProblem]:
    """`num` distinct problems of `split`, a pure function of (num, seed, split, config).

    Problems are drawn from `config` and kept when they hash to `split` (`split_of`), so the
    splits never share a problem whatever the seeds.

    Raises:
      ValueError: unknown split, or fewer than `num` distinct problems of the split exist.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid splits are {SPLITS}.")
    operators = list(config.operators)
    space = sum(10 * (10 * len(operators)) ** n for n in range(config.min_ops, config.max_ops + 1))
    if num > space // 20:  # test and dev each hold ~1/10; stay well below exhausting them
        raise ValueError(
            f"Asked for {num} distinct {split} problems, but {config} has only {space} problems "
            "in all; raise max_ops or ask for fewer."
        )
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    problems: dict[ChainProblem, None] = {}
    while len(problems) < num:
        n = int(rng.integers(config.min_ops, config.max_ops + 1))
        ops = tuple(
            (operators[int(rng.integers(len(operators)))], int(rng.integers(10))) for _ in range(n)
        )
        problem = ChainProblem(int(rng.integers(10)), ops)
        if split_of(problem) == split:
            problems.setdefault(problem)
    return list(problems)


_OP_STEP = re.compile(r"\s*(\d+)\s*:\s*(\d)\s*([-+*])\s*(\d)\s*=\s*(\d)\s*")
_ANSWER_STEP = re.compile(r"\s*Answer\s*:\s*(\d)\s*")


@dataclasses.dataclass(frozen=True)
class ChainStep:
    """One parsed line: an operation `index: lhs op operand = result`, an answer, or invalid."""

    kind: Literal["op", "answer", "invalid"]
    index: int = 0
    lhs: int = 0
    op: str = ""
    operand: int = 0
    result: int = 0  # the operation's written result, or the answer
    reason: str = ""  # why the line is invalid; empty otherwise


def parse_chain_step(text: str) -> ChainStep:
    """Parses one line (its trailing "\\n" optional; spaces ignored); never raises."""
    line = text[: -len(STEP_END)] if text.endswith(STEP_END) else text
    if match := _ANSWER_STEP.fullmatch(line):
        return ChainStep("answer", result=int(match.group(1)))
    if match := _OP_STEP.fullmatch(line):
        index, lhs, op, operand, result = match.groups()
        return ChainStep("op", int(index), int(lhs), op, int(operand), int(result))
    return ChainStep("invalid", reason=f"not 'k: a op b=c' nor 'Answer: d': {line[:40]!r}")


def split_steps(solution: str) -> list[str]:
    """A solution's lines, each with its "\\n" (a last line without one is kept as it is)."""
    return solution.splitlines(keepends=True)


def _step_matches(problem: ChainProblem, t: int, step: ChainStep) -> bool:
    """Whether `step` is the gold line t (0-based) of `problem`."""
    n, values = problem.num_ops, problem.values
    if t < n:
        op, operand = problem.ops[t]
        return step == ChainStep("op", t + 1, values[t], op, operand, values[t + 1])
    return t == n and step == ChainStep("answer", result=problem.answer)


def step_correctness(problem: ChainProblem, steps: Sequence[str]) -> list[bool]:
    """True correctness of each step: step t is correct iff steps 0..t all equal the gold lines
    (parsed, so spaces do not matter). False from the first error on."""
    correct, prefix_ok = [], True
    for t, text in enumerate(steps):
        prefix_ok = prefix_ok and _step_matches(problem, t, parse_chain_step(text))
        correct.append(prefix_ok)
    return correct


def first_error(problem: ChainProblem, steps: Sequence[str]) -> int | None:
    """1-based index of the first incorrect step (`step_correctness`), None if there is none."""
    correct = step_correctness(problem, steps)
    return next((t + 1 for t, ok in enumerate(correct) if not ok), None)


def final_answer(solution: str) -> int | None:
    """The digit of the solution's first "Answer:" line, None if it has none."""
    for line in split_steps(solution):
        step = parse_chain_step(line)
        if step.kind == "answer":
            return step.result
    return None


def verify(problem: ChainProblem, solution: str) -> bool:
    """The outcome check: the solution's answer is the gold answer (steps are not read)."""
    return final_answer(solution) == problem.answer


def noisy_expert_steps(
    problem: ChainProblem, rng: np.random.Generator, error_rate: float
) -> list[str]:
    """An expert solution whose operation results are each wrong with probability `error_rate`.

    A wrong result is uniform over the 9 other digits; later lines compute from the value
    written (errors propagate, as a human's would), and the answer is the last value written.
    """
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must lie in [0, 1], got {error_rate}.")
    value, steps = problem.start, []
    for k, (op, operand) in enumerate(problem.ops, 1):
        result = apply_op(value, op, operand)
        if rng.random() < error_rate:
            result = (result + int(rng.integers(1, 10))) % 10
        steps.append(format_op_step(k, value, op, operand, result))
        value = result
    steps.append(format_answer_step(value))
    return steps


def chain_step_result(
    problem: ChainProblem, previous_steps: Sequence[str], text: str, max_extra_steps: int = 2
) -> StepResult:
    """The env's result of one policy step `text` after `previous_steps` (pure; tree searches
    call it on a node without an env).

    The step is cut after its first "\\n". An "Answer:" line ends the episode with reward 1 iff
    its digit is the gold answer; a line that parses as neither step ends it with reward 0; so
    does the operation line that brings the count to `num_ops + max_extra_steps` (no answer in
    sight). Otherwise the episode goes on with nothing forced (observation ""). `info` holds
    "prefix_correct": the true correctness of this step (`step_correctness`).
    """
    text = truncate_at_stop(text, (STEP_END,))
    step = parse_chain_step(text)
    t = len(previous_steps)
    prefix_correct = all(step_correctness(problem, previous_steps)) and _step_matches(
        problem, t, step
    )
    info: dict[str, object] = {"prefix_correct": prefix_correct}
    if step.kind == "answer":
        reward = float(step.result == problem.answer)
        return StepResult(text, Action("answer", str(step.result)), "", True, reward, info)
    if step.kind == "invalid":
        return StepResult(text, Action("invalid", reason=step.reason), "", True, 0.0, info)
    done = t + 1 >= problem.num_ops + max_extra_steps
    return StepResult(text, Action("step", text.strip()), "", done, 0.0, info)


class ChainArithmeticEnv:
    """`prm.rollouts.Env` over `ChainProblem`s: one line per step, ends on "Answer:".

        env = ChainArithmeticEnv()
        batch = rollout(Sampler(model), env, tokenizer, problems, RolloutConfig(...), key=key)

    Outcomes per episode: "reward" (the answer is right), "process_correct" (every step is
    correct, the answer line included) and "num_steps". An episode that has not ended yet
    reports reward 0 and process_correct 0.
    """

    stop_strings = (STEP_END,)

    def __init__(self, max_extra_steps: int = 2):
        if max_extra_steps < 1:
            raise ValueError(
                f"max_extra_steps must be >= 1 (the answer line), got {max_extra_steps}."
            )
        self.max_extra_steps = max_extra_steps
        self._problems: list[ChainProblem] = []
        self._steps: list[list[str]] = []
        self._results: list[list[StepResult]] = []

    def reset(self, tasks: Sequence[ChainProblem]) -> list[str]:
        self._problems = list(tasks)
        self._steps = [[] for _ in self._problems]
        self._results = [[] for _ in self._problems]
        return [problem.prompt for problem in self._problems]

    def step(self, step_texts: Sequence[str | None]) -> list[StepResult | None]:
        if len(step_texts) != len(self._problems):
            raise ValueError(
                f"step: {len(step_texts)} texts for {len(self._problems)} episodes (pass None "
                "for episodes that take no step)."
            )
        results: list[StepResult | None] = [None] * len(step_texts)
        for i, text in enumerate(step_texts):
            if text is None:
                continue
            if self._results[i] and self._results[i][-1].done:
                raise ValueError(f"step: episode {i} is over; pass None for it.")
            results[i] = chain_step_result(
                self._problems[i], self._steps[i], text, self.max_extra_steps
            )
        for i, result in enumerate(results):  # pure above, so a failure changed nothing
            if result is not None:
                self._steps[i].append(result.step_text)
                self._results[i].append(result)
        return results

    def outcomes(self) -> list[dict[str, float]]:
        outcomes = []
        for results in self._results:
            done = bool(results) and results[-1].done
            outcomes.append(
                {
                    "reward": results[-1].reward if done else 0.0,
                    "process_correct": float(done and results[-1].info["prefix_correct"]),
                    "num_steps": float(len(results)),
                }
            )
        return outcomes


def build_chain_tokenizer(out_dir: str | os.PathLike[str] | None = None) -> PreTrainedTokenizerFast:
    """A character-level tokenizer for the task's text, in Hugging Face format.

    Ids: `<|endoftext|>` 0 (end of sequence and padding), `<unk>` 1, then one id per character
    of `ALPHABET` (first occurrence order), 26 in all, so "\\n" (the step end) is one token.
    Saved to `out_dir` when given (loadable by `AutoTokenizer.from_pretrained`).
    """
    from tokenizers import Tokenizer, decoders, models  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 - slow to import

    vocab = {END_OF_TEXT: 0, UNKNOWN: 1}
    for char in ALPHABET:
        vocab.setdefault(char, len(vocab))
    # BPE without merges over an unsplit string: one token per character.
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNKNOWN))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([END_OF_TEXT, UNKNOWN])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=UNKNOWN,
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )
    if out_dir is not None:
        fast.save_pretrained(os.fspath(out_dir))
    return fast
