"""The local judge: SLATE's rubric prompts answered by a model prm runs itself, greedily.

Any model prm can load (`prm.models.from_pretrained`, or a `Transformer` in memory) judges with
the same prompts and strict parser as the HTTP judge (`prm.judges.prompts`), decoding through
prm's own sampler (`prm.sampling.Sampler`): greedy, as SLATE's judge at temperature 0
(slate.md §3.2), in batches of `batch_size` prompts, each reply stopping at `</score>`, an end
token or `max_new_tokens`. A prompt is wrapped in the tokenizer's chat template when it has one.

A prompt whose tokens plus `max_new_tokens` exceed the model's context is not run: it gets the
neutral score and counts as `too_long` (and `failed`), so one long context cannot stop a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prm.judges.prompts import PromptJudge
from prm.models import Transformer
from prm.registry import JUDGES
from prm.sampling import GREEDY, Sampler

SCORE_CLOSE = "</score>"


class LocalJudge(PromptJudge):
    """Judges with `model` and `tokenizer` (a Hugging Face tokenizer) in this process.

    Args:
      model: the judge model.
      tokenizer: its tokenizer.
      max_new_tokens: reply budget per prompt.
      batch_size: prompts decoded together; the last batch is padded to this size so every
        batch has one shape (one compilation).
      neutral_score, all_golden_answers: as in `PromptJudge`.
    Counters: those of `PromptJudge`, plus `too_long`.
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer: Any,
        *,
        max_new_tokens: int = 256,
        batch_size: int = 16,
        neutral_score: int = 0,
        all_golden_answers: bool = False,
    ):
        super().__init__(
            neutral_score=neutral_score,
            all_golden_answers=all_golden_answers,
            extra_counters=("too_long",),
        )
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError(
                f"Need max_new_tokens >= 1 and batch_size >= 1, got {max_new_tokens}, {batch_size}."
            )
        self.sampler = Sampler(model)
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.max_prompt_tokens = model.config.max_position_embeddings - max_new_tokens
        self._stop = tokenizer.encode(SCORE_CLOSE, add_special_tokens=False)

    def prompt_ids(self, prompt: str) -> list[int]:
        """The prompt's tokens, in the chat template when the tokenizer has one."""
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            return self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenizer.encode(prompt)

    def complete(self, prompts: Sequence[str]) -> list[str | None]:
        ids = [self.prompt_ids(p) for p in prompts]
        runnable = [i for i, x in enumerate(ids) if 0 < len(x) <= self.max_prompt_tokens]
        self.stats.add("too_long", len(prompts) - len(runnable))
        replies: list[str | None] = [None] * len(prompts)
        for start in range(0, len(runnable), self.batch_size):
            rows = runnable[start : start + self.batch_size]
            batch = [ids[i] for i in rows]
            batch += [batch[-1]] * (self.batch_size - len(batch))
            for i, reply in zip(rows, self._generate(batch)):
                replies[i] = reply
        return replies

    def _generate(self, batch: list[list[int]]) -> list[str]:
        session = self.sampler.start(batch, reserve=self.max_new_tokens)
        generation = session.generate(self.max_new_tokens, sampling=GREEDY, stops=[self._stop])
        return [
            self.tokenizer.decode(tokens, skip_special_tokens=True)
            for tokens in generation.token_lists()
        ]


@JUDGES.register("local")
def local_judge(
    checkpoint: str = "",
    tokenizer: Any = "",
    model: Transformer | None = None,
    **options: Any,
) -> LocalJudge:
    """A `LocalJudge` from config fields: `checkpoint`, a Hugging Face checkpoint directory
    (`prm.models.from_pretrained`), unless a `model` object is given; `tokenizer`, a tokenizer
    object or a directory (default: the checkpoint's); `options` as in `LocalJudge`."""
    if model is None:
        if not checkpoint:
            raise ValueError("The local judge needs a `checkpoint` directory or a `model`.")
        from prm.models import from_pretrained

        model, _ = from_pretrained(checkpoint)
    if isinstance(tokenizer, str):
        if not (tokenizer or checkpoint):
            raise ValueError("The local judge needs a `tokenizer` (object or directory).")
        from transformers import AutoTokenizer  # slow to import; only needed here

        tokenizer = AutoTokenizer.from_pretrained(tokenizer or checkpoint)
    return LocalJudge(model, tokenizer, **options)
