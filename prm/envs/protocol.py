"""The Search-R1 trajectory protocol: prompt, tags, step parser, observations, masks, episodes.

Text and tags only, no model (DESIGN.md: "the env knows text and tags, not models"). Follows
Search-R1 (Jin et al., 2025, arXiv 2503.09516; notes: search_r1_stepsearch.md §1.1-1.4), whose
prompt is `SEARCH_R1_UPSTREAM_TEMPLATE` (`SEARCH_R1_TEMPLATE` says the same in our wording).
A trajectory:

    policy:  <think> … </think> <search> query </search>
    env:     \\n\\n<information>Doc 1(Title: "T") text\\nDoc 2(…) …</information>\\n\\n
    policy:  <think> … </think> <answer> a </answer>          ← episode ends, reward = EM(a, golds)

A step that holds neither a complete `<search>` nor `<answer>` block is *invalid*: the env forces
`INVALID_ACTION_FEEDBACK` (Search-R1 code's "My previous action is invalid …" message, §1.3) and
the episode goes on; it counts as a turn. After `max_turns` search-enabled calls, one final call
is made with search disabled: an answer there is scored, anything else ends the episode with
reward 0 (Search-R1's final rollout). Optionally (SLATE §2.1) the env forces `forced_answer`
(e.g. "\\n<answer>") before that final call.

Deviations from the reference code, all in favour of exact masks:
- A step is cut at the *earliest* of `</search>` / `</answer>` (upstream prefers `</search>`
  anywhere in the text over an earlier `</answer>`); this is also where a sampler stops.
- Observations are truncated inside the `<information>` block, so the closing tag survives
  (upstream keeps the first `max_obs_length` tokens and can cut `</information>` off).
- An empty query or answer is invalid (upstream sends an empty query to the retriever).
- Masks come from per-segment tokenisation, never from re-tokenising the joined text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np

from prm.envs.retrieval.base import Passage, Retriever
from prm.metrics import qa

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
INFORMATION_OPEN, INFORMATION_CLOSE = "<information>", "</information>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (
    THINK_OPEN,
    THINK_CLOSE,
    SEARCH_OPEN,
    SEARCH_CLOSE,
    INFORMATION_OPEN,
    INFORMATION_CLOSE,
    ANSWER_OPEN,
    ANSWER_CLOSE,
)
# Strings that end a policy step; give them to the sampler as stop sequences.
STEP_STOP_STRINGS = (SEARCH_CLOSE, ANSWER_CLOSE)

# Search-R1's instruction (§1.2: answer rule, think rule, search rule, multiplicity, answer
# format, inline example, then the question), in our wording. Released Search-R1 checkpoints
# were trained on SEARCH_R1_UPSTREAM_TEMPLATE: evaluate them with that one.
SEARCH_R1_TEMPLATE = (
    "Answer the given question. First reason inside <think> and </think> every time you get new "
    "information. After reasoning, if you lack some knowledge, call a search engine with "
    "<search> query </search>, and it returns the top results between <information> and "
    "</information>. You may search as many times as you want. If no further knowledge is "
    "needed, give the answer inside <answer> and </answer>, without detailed explanation. "
    "For example, <answer> Beijing </answer>. Question: {question}\n"
)
# Upstream Search-R1's prompt, byte for byte: `make_prefix(dp, template_type="base")` in
# scripts/data_process/nq_search.py of PeterGriffinJin/Search-R1 at commit a14dc3a (the same
# string is in qa_search_train_merge.py, qa_search_test_merge.py and infer.py), with its f-string
# field `{question}` kept as a format field; typos ("as your want") included. An interface
# constant: checkpoints trained on it are evaluated on it (prm/third_party/search_r1/README.md).
SEARCH_R1_UPSTREAM_TEMPLATE = (
    "Answer the given question. "
    "You must conduct reasoning inside <think> and </think> first every time you get new "
    "information. "
    "After reasoning, if you find you lack some knowledge, you can call a search engine by "
    "<search> query </search> and it will return the top searched results between "
    "<information> and </information>. "
    "You can search as many times as your want. "
    "If you find no further external knowledge needed, you can directly provide the answer "
    "inside <answer> and </answer>, without detailed illustrations. "
    "For example, <answer> Beijing </answer>. Question: {question}\n"
)
# The same rules in ~30 tokens, for the synthetic world's 256-token policy.
COMPACT_TEMPLATE = (
    "Answer the question. Think in <think> </think>, search with <search> query </search>, "
    "answer with <answer> answer </answer>.\nQuestion: {question}\n"
)
INVALID_ACTION_FEEDBACK = (
    "\nMy previous action is invalid. If I want to search, I should put the query between "
    "<search> and </search>. If I want to give the final answer, I should put the answer "
    "between <answer> and </answer>. Let me try again.\n"
)

_ACTION_KINDS = ("search", "answer")


class TextTokenizer(Protocol):
    """The part of a Hugging Face tokenizer the protocol uses."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], **kwargs) -> str: ...


def format_question(question: str) -> str:
    """Search-R1's preprocessing: strip, and end with a '?'."""
    question = question.strip()
    return question if question.endswith("?") else question + "?"


def render_prompt(
    question: str, template: str = SEARCH_R1_TEMPLATE, tokenizer: object | None = None
) -> str:
    """The prompt text for `question`.

    As in Search-R1, the instruction is one user message; when `tokenizer` has a chat template it
    is applied with `add_generation_prompt=True`, otherwise the raw text is the prompt.
    """
    content = template.format(question=format_question(question))
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    return content


def stop_token_sequences(
    tokenizer: TextTokenizer, stops: Sequence[str] = STEP_STOP_STRINGS
) -> list[list[int]]:
    """`stops` as token-id sequences, the form a sampler matches on generated tokens."""
    return [tokenizer.encode(s, add_special_tokens=False) for s in stops]


def truncate_at_stop(text: str, stops: Sequence[str] = STEP_STOP_STRINGS) -> str:
    """`text` up to and including the earliest stop string (unchanged if none occurs)."""
    ends = [i + len(s) for s in stops if (i := text.find(s)) >= 0]
    return text[: min(ends)] if ends else text


@dataclasses.dataclass(frozen=True)
class Action:
    """A parsed step: `search` (content = query), `answer` (content = answer), `step` (a
    reasoning step without a tool call, content = its text; e.g. `prm.envs.chain_arithmetic`),
    or `invalid`."""

    kind: Literal["search", "answer", "step", "invalid"]
    content: str = ""
    reason: str = ""  # why the step is invalid; empty otherwise


def parse_step(text: str) -> Action:
    """Parses one policy step; never raises.

    The action is the first complete `<search>…</search>` or `<answer>…</answer>` block, content
    stripped: the first match of Search-R1's regex `<(search|answer)>(.*?)</\\1>` (DOTALL), found
    in linear time by `first_action_block`. Missing or empty blocks give an invalid action whose
    `reason` says what was wrong.
    """
    block = first_action_block(text)
    if block is None:
        for open_tag in (SEARCH_OPEN, ANSWER_OPEN):
            if open_tag in text:
                return Action("invalid", reason=f"{open_tag} is not closed")
        return Action("invalid", reason="no <search> or <answer> block")
    kind, content = block[0], block[1].strip()
    if not content:
        return Action("invalid", reason=f"empty <{kind}> block")
    return Action(kind, content)  # type: ignore[arg-type]


def first_action_block(text: str) -> tuple[str, str] | None:
    """(kind, raw content) of the earliest complete action block, or None; O(len(text)).

    The same block as `re.search(r"<(search|answer)>(.*?)</\\1>", text, re.DOTALL)`, whose
    every failed start position scans to the end of the text (quadratic in a step of repeated
    `<search>`). A kind's leftmost block opens at its first open tag if any close tag of that
    kind follows it (a later open tag would need a close tag even later) and ends at the first
    such close tag; of the two kinds, the block opening first wins.
    """
    best: tuple[int, str, str] | None = None
    for kind in _ACTION_KINDS:
        open_tag, close_tag = f"<{kind}>", f"</{kind}>"
        start = text.find(open_tag)
        if start < 0 or (best is not None and start > best[0]):
            continue
        end = text.find(close_tag, start + len(open_tag))
        if end >= 0:
            best = (start, kind, text[start + len(open_tag) : end])
    return None if best is None else best[1:]


def format_documents(passages: Sequence[Passage]) -> str:
    """Search-R1's `_passages2string`: 'Doc i(Title: "T") text' per passage, one per line.

    The title is the first line of `contents` (quotes kept), the text is the rest.
    """
    lines = []
    for i, passage in enumerate(passages):
        title, _, text = passage["contents"].partition("\n")
        lines.append(f"Doc {i + 1}(Title: {title}) {text}")
    return "\n".join(lines).strip()


def format_observation(
    passages: Sequence[Passage],
    tokenizer: TextTokenizer | None = None,
    max_tokens: int | None = None,
) -> str:
    """'\\n\\n<information>{docs}</information>\\n\\n', at most `max_tokens` tokens in all.

    Truncation cuts the documents' text, keeping the wrapper intact so `</information>` is
    always there (see the module docstring).
    """
    prefix, suffix = f"\n\n{INFORMATION_OPEN}", f"{INFORMATION_CLOSE}\n\n"
    body = format_documents(passages)
    if max_tokens is None:
        return prefix + body + suffix
    if tokenizer is None:
        raise ValueError("format_observation: max_tokens needs a tokenizer to count tokens.")

    def length(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    wrapper = length(prefix) + length(suffix)
    if wrapper > max_tokens:
        raise ValueError(
            f"max_tokens={max_tokens} cannot hold the <information> wrapper ({wrapper} tokens); "
            "raise max_obs_tokens."
        )
    body_ids = tokenizer.encode(body, add_special_tokens=False)
    keep = max_tokens - wrapper
    while True:
        text = prefix + _decode(tokenizer, body_ids[:keep]) + suffix
        # Tokens can merge differently across the cut, so check the real length.
        if keep <= 0 or length(text) <= max_tokens:
            return text
        keep -= 1


def _decode(tokenizer: TextTokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@dataclasses.dataclass(frozen=True)
class Segment:
    """A span of a trajectory: policy text (`trainable`, belongs to step `step_index`) or
    prompt/observation text (not trainable, step -1)."""

    text: str
    trainable: bool
    step_index: int = -1

    def __post_init__(self):
        if self.trainable and self.step_index < 0:
            raise ValueError(f"A trainable segment needs step_index >= 0: {self.text[:40]!r}.")
        if not self.trainable and self.step_index != -1:
            raise ValueError(
                f"A non-trainable segment has step_index -1, got {self.step_index}: "
                f"{self.text[:40]!r}."
            )


@dataclasses.dataclass(frozen=True)
class TokenizedTrajectory:
    tokens: np.ndarray  # int32[T]
    loss_mask: np.ndarray  # bool[T]: the token was written by the policy
    step_id: np.ndarray  # int32[T]: the policy step that wrote the token, −1 otherwise


def tokenize_segments(tokenizer: TextTokenizer, segments: Sequence[Segment]) -> TokenizedTrajectory:
    """Token ids, loss mask and step ids of a trajectory, segment by segment.

    Each segment is encoded on its own (no special tokens added), which is how the tokens arise
    during sampling: generated ids, then forced observation ids. Search-R1 eq. 2-3: the loss
    indicator I(y_t) = 1 exactly on policy-written tokens.
    """
    tokens, mask, step = [], [], []
    for segment in segments:
        ids = tokenizer.encode(segment.text, add_special_tokens=False)
        tokens.extend(ids)
        mask.extend([segment.trainable] * len(ids))
        step.extend([segment.step_index] * len(ids))
    return TokenizedTrajectory(
        np.asarray(tokens, np.int32), np.asarray(mask, np.bool_), np.asarray(step, np.int32)
    )


def collate(
    trajectories: Sequence[TokenizedTrajectory], max_len: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Right-pads trajectories to `[B, max_len]`.

    Returns `tokens` int32, `input_mask` bool (real tokens), `loss_mask` float32 and `step_id`
    int32 (−1 on padding). A trajectory longer than `max_len` is an error, not a silent cut.
    """
    if not trajectories:
        raise ValueError("collate: no trajectories given.")
    longest = max(len(t.tokens) for t in trajectories)
    if longest > max_len:
        raise ValueError(
            f"collate: a trajectory has {longest} tokens > max_len={max_len}; raise max_len or "
            "drop long trajectories."
        )
    batch = len(trajectories)
    out = {
        "tokens": np.full((batch, max_len), pad_id, np.int32),
        "input_mask": np.zeros((batch, max_len), np.bool_),
        "loss_mask": np.zeros((batch, max_len), np.float32),
        "step_id": np.full((batch, max_len), -1, np.int32),
    }
    for b, t in enumerate(trajectories):
        n = len(t.tokens)
        out["tokens"][b, :n] = t.tokens
        out["input_mask"][b, :n] = True
        out["loss_mask"][b, :n] = t.loss_mask
        out["step_id"][b, :n] = t.step_id
    return out


def outcome_scores(answer: str | None, golden_answers: Sequence[str]) -> tuple[float, float]:
    """(EM, F1) of `answer` against every gold answer (max over golds); (0, 0) without answer."""
    if answer is None:
        return 0.0, 0.0
    return float(qa.exact_match(answer, golden_answers)), float(qa.f1_score(answer, golden_answers))


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    topk: int = 3
    max_turns: int = 4  # search-enabled calls; one final answer-only call follows
    max_obs_tokens: int | None = 500  # needs the env's tokenizer when set
    forced_answer: str | None = None  # forced before the final call (SLATE: "\n<answer>")
    # Forced after every other observation (SLATE: "<think>"); context, like the observation.
    after_observation: str = ""
    invalid_feedback: str = INVALID_ACTION_FEEDBACK

    def __post_init__(self):
        if self.topk < 1 or self.max_turns < 0:
            raise ValueError(f"Need topk >= 1 and max_turns >= 0, got {self}.")


@dataclasses.dataclass(frozen=True)
class QATask:
    """A question and its gold answers: what `SearchEnv.reset` takes per episode.

    Any object with these two attributes will do (e.g. `prm.envs.qa_data.QAExample`).
    """

    question: str
    golden_answers: tuple[str, ...]


@dataclasses.dataclass
class Episode:
    """One question's trajectory so far."""

    question: str
    golden_answers: tuple[str, ...]
    segments: list[Segment]  # prompt, then alternating policy steps and observations
    actions: list[Action] = dataclasses.field(default_factory=list)
    queries: list[str] = dataclasses.field(default_factory=list)  # sent to the retriever
    done: bool = False
    answer: str | None = None
    em: float = 0.0
    f1: float = 0.0
    pending_prefix: str = ""  # forced text the next step continues (forced_answer)

    @property
    def turns(self) -> int:
        return len(self.actions)


@dataclasses.dataclass(frozen=True)
class StepResult:
    step_text: str  # the policy text kept (cut after the first stop string)
    action: Action
    observation: str  # text to force before the next step ("" when done)
    done: bool
    reward: float  # the step's reward (SearchEnv: EM at the end of the episode, 0 before)
    # Whatever else the env knows about the step (SearchEnv: "query" and "passages" of an
    # executed search), for step-level rewards such as StepSearch's information gain.
    info: dict[str, object] = dataclasses.field(default_factory=dict)


class SearchEnv:
    """Batched Search-R1 episodes over a retriever (text in, text out).

        env = SearchEnv(retriever, EnvConfig(), tokenizer)
        prompts = env.reset([QATask(question, golden_answers), ...])
        results = env.step(step_texts)        # one text per episode, None for no step
        env.outcomes()                        # per episode {"reward": EM, "em", "f1"}

    All queries of a `step` go to the retriever in one `retrieve` call. A step is atomic: if the
    retriever raises, no episode has changed and the same call can be retried.
    """

    stop_strings = STEP_STOP_STRINGS

    def __init__(
        self,
        retriever: Retriever,
        config: EnvConfig = EnvConfig(),
        tokenizer: TextTokenizer | None = None,
        template: str = SEARCH_R1_TEMPLATE,
    ):
        if config.max_obs_tokens is not None and tokenizer is None:
            raise ValueError("EnvConfig.max_obs_tokens is set: give SearchEnv a tokenizer.")
        self.retriever = retriever
        self.config = config
        self.tokenizer = tokenizer
        self.template = template
        self.episodes: list[Episode] = []

    def reset(self, tasks: Sequence[QATask]) -> list[str]:
        """Starts one episode per task (a `QATask` or anything with `question` and
        `golden_answers`); returns the prompts."""
        episodes = []
        for i, task in enumerate(tasks):
            question = getattr(task, "question", None)
            golds = getattr(task, "golden_answers", None)
            if not isinstance(question, str):
                raise ValueError(f"reset: task {i} needs a string `question`, got {task!r}.")
            if isinstance(golds, str) or not golds:
                raise ValueError(
                    f"reset: task {i} needs a nonempty list of `golden_answers`, got {golds!r}."
                )
            prompt = render_prompt(question, self.template, self.tokenizer)
            episodes.append(Episode(question, tuple(golds), [Segment(prompt, False)]))
        self.episodes = episodes
        return [e.segments[0].text for e in self.episodes]

    @property
    def done(self) -> list[bool]:
        return [e.done for e in self.episodes]

    def outcomes(self) -> list[dict[str, float]]:
        """Per episode: "reward" (EM, Search-R1's outcome reward), "em" and "f1"; 0 unanswered."""
        return [{"reward": e.em, "em": e.em, "f1": e.f1} for e in self.episodes]

    def step(self, step_texts: Sequence[str | None]) -> list[StepResult | None]:
        """Applies one policy step per episode; None means no step (and gives a None result).

        Each text is cut after its first stop string and parsed: an answer ends the episode with
        reward EM; a search returns the `<information>` observation; an invalid step returns the
        invalid-action feedback. On the final (search-disabled) call anything but an answer ends
        the episode with reward 0. Episodes change only after the retriever has answered.
        """
        if len(step_texts) != len(self.episodes):
            raise ValueError(
                f"step: {len(step_texts)} texts for {len(self.episodes)} episodes (pass None for "
                "episodes that take no step)."
            )
        steps: list[tuple[int, str, Action, bool]] = []  # episode, text, action, final call
        for i, (episode, raw) in enumerate(zip(self.episodes, step_texts)):
            if raw is None:
                continue
            if episode.done:
                raise ValueError(f"step: episode {i} is over; pass None for it.")
            text = truncate_at_stop(raw)
            action = parse_step(episode.pending_prefix + text)
            steps.append((i, text, action, episode.turns >= self.config.max_turns))
        searches = [(i, a.content) for i, _, a, final in steps if a.kind == "search" and not final]
        found = {}
        if searches:
            passages = self.retriever.retrieve([q for _, q in searches], self.config.topk)
            for (i, query), docs in zip(searches, passages):
                obs = format_observation(docs, self.tokenizer, self.config.max_obs_tokens)
                found[i] = obs, {"query": query, "passages": list(docs)}
        # Nothing below can fail: the step is committed to every episode at once.
        results: list[StepResult | None] = [None] * len(self.episodes)
        for i, text, action, final in steps:
            episode = self.episodes[i]
            episode.segments.append(Segment(text, True, episode.turns))
            episode.actions.append(action)
            episode.pending_prefix = ""
            if action.kind == "answer" or final:
                if action.kind == "answer":
                    episode.answer = action.content
                episode.em, episode.f1 = outcome_scores(episode.answer, episode.golden_answers)
                episode.done = True
                results[i] = StepResult(text, action, "", True, episode.em)
            elif i in found:
                obs, info = found[i]
                episode.queries.append(action.content)
                results[i] = StepResult(text, action, self._observe(episode, obs), False, 0.0, info)
            else:
                feedback = self._observe(episode, self.config.invalid_feedback)
                results[i] = StepResult(text, action, feedback, False, 0.0)
        return results

    def _observe(self, episode: Episode, observation: str) -> str:
        """Records what the env forces after a step: the observation (or invalid-action feedback),
        then `forced_answer` when the next call is the final one, else `after_observation`."""
        if self.config.forced_answer and episode.turns == self.config.max_turns:
            observation += self.config.forced_answer
            episode.pending_prefix = self.config.forced_answer
        else:
            observation += self.config.after_observation
        episode.segments.append(Segment(observation, False))
        return observation
