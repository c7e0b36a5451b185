"""Multi-turn rollouts: masks and step ids against a hand-built trajectory, forced answers,
truncation, groups, env retries, and the KV-cache rollout against re-prefilling the whole
context every turn."""

import dataclasses
import types

import jax
import numpy as np
import pytest
from flax import nnx

from prm.envs import protocol as P
from prm.envs.assets import load_world_assets
from prm.models import ModelConfig, Transformer
from prm.rollouts import EnvStepError, EpisodeEnd, RolloutConfig, SingleTurnEnv, rollout
from prm.sampling import FinishReason, Generation, Sampler, SamplingParams
from tests.helpers.worlds import SMALL_WORLD

ENV = P.EnvConfig(topk=2, max_turns=2, max_obs_tokens=None, forced_answer="<answer>")


def tasks(questions):
    return [P.QATask(q.text, q.answers) for q in questions]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    # One directory per session, so every module asking for this world shares one load.
    return load_world_assets(SMALL_WORLD, tmp_path_factory.getbasetemp() / "worlds", 400)


class ScriptedSampler:
    """Stands in for `Sampler`: row b's t-th `generate` emits `scripts[b][t]`, tokenized.

    It records every row's context (prompt, generated and appended tokens), so a test can check
    that the rollout forced exactly the tokens its trajectory says it did.
    """

    def __init__(self, tokenizer, scripts):
        self.tokenizer, self.scripts = tokenizer, scripts
        self.config = types.SimpleNamespace(max_position_embeddings=1024)
        self.pad_token_id = tokenizer.pad_token_id

    def start(self, prompts, reserve=0):
        self.prefilled = [list(p) for p in prompts]
        self.contexts = [list(p) for p in prompts]
        self.calls = [0] * len(prompts)
        return self

    def fork(self, k):
        self.contexts = [list(c) for c in self.contexts for _ in range(k)]
        self.calls = [0] * len(self.contexts)
        return self

    def generate(self, max_new_tokens, *, key=None, sampling=None, stops=(), active=None):
        batch = len(self.contexts)
        tokens = np.zeros((batch, max_new_tokens), np.int32)
        logprobs = np.zeros((batch, max_new_tokens), np.float32)
        counts = np.zeros(batch, np.int32)
        finish = np.full(batch, FinishReason.INACTIVE, np.int32)
        for b in np.flatnonzero(active):
            ids = self.tokenizer.encode(self.scripts[b][self.calls[b]], add_special_tokens=False)
            ids = ids[:max_new_tokens]
            self.calls[b] += 1
            counts[b] = len(ids)
            tokens[b, : len(ids)] = ids
            # Distinct per position so the test can tell where each log-prob landed.
            logprobs[b, : len(ids)] = -(np.arange(len(ids)) + 1) / 100 - b
            ends = any(ids[-len(s) :] == list(s) for s in stops)
            finish[b] = FinishReason.STOP if ends else FinishReason.LENGTH
            self.contexts[b].extend(ids)
        return Generation(tokens, counts, logprobs, logprobs, finish, np.full(batch, -1))

    def append(self, tokens):
        for context, new in zip(self.contexts, tokens):
            context.extend(new)


def test_scripted_episodes_match_a_hand_built_trajectory(assets):
    world, tokenizer, retriever = assets.world, assets.tokenizer, assets.retriever
    bridge = next(q for q in world.split("train") if q.qtype == "bridge")
    single = next(q for q in world.split("train") if q.qtype == "single")
    first = world.entities[bridge.hops[0].subject].name
    query0 = f"{bridge.hops[0].relation} {first}"
    query1 = "something else"
    scripts = [
        [f"<search> {query0} </search>", f"<search> {query1} </search>", " 1999 </answer>"],
        [f"<answer> {single.answers[0]} </answer>"],
    ]
    sampler = ScriptedSampler(tokenizer, scripts)
    env = P.SearchEnv(retriever, ENV, tokenizer, P.COMPACT_TEMPLATE)
    batch = rollout(
        sampler,
        env,
        tokenizer,
        tasks([bridge, single]),
        RolloutConfig(max_length=512),
    )

    # Row 0: search, search (max_turns=2), then the final call continues the forced "<answer>".
    obs0, obs1 = (
        P.format_observation(retriever.retrieve([q], ENV.topk)[0]) for q in (query0, query1)
    )
    expected = P.tokenize_segments(
        tokenizer,
        [
            P.Segment(P.render_prompt(bridge.text, P.COMPACT_TEMPLATE), False),
            P.Segment(scripts[0][0], True, 0),
            P.Segment(obs0, False),
            P.Segment(scripts[0][1], True, 1),
            P.Segment(obs1 + "<answer>", False),
            P.Segment(scripts[0][2], True, 2),
        ],
    )
    n = len(expected.tokens)
    np.testing.assert_array_equal(batch.tokens[0, :n], expected.tokens)
    np.testing.assert_array_equal(batch.loss_mask[0, :n], expected.loss_mask)
    np.testing.assert_array_equal(batch.step_id[0, :n], expected.step_id)
    assert batch.input_mask[0].sum() == n and batch.loss_mask[0, n:].sum() == 0
    assert (batch.step_id[0, n:] == -1).all() and (
        batch.tokens[0, n:] == tokenizer.pad_token_id
    ).all()
    # The session saw exactly the trajectory: generated tokens plus the forced ones.
    assert sampler.contexts[0] == expected.tokens.tolist()
    # Per-step metadata: each step's action, and for executed searches the query and passages.
    assert [s.action.kind for s in batch.steps[0]] == ["search", "search", "answer"]
    assert [s.info["query"] for s in batch.steps[0][:2]] == [query0, query1]
    assert batch.steps[0][0].info["passages"] == retriever.retrieve([query0], ENV.topk)[0]
    assert batch.answers == ["1999", single.answers[0]]
    assert batch.step_rewards.tolist() == [[0.0, 0.0, batch.em[0]], [1.0, 0.0, 0.0]]
    assert batch.finish_reason[0] == EpisodeEnd.ANSWER and batch.num_turns[0] == 3
    # Log-probs sit on the sampled tokens, in order: step 2's k-th token has -(k+1)/100.
    step2 = np.flatnonzero(batch.step_id[0] == 2)
    np.testing.assert_allclose(batch.logprobs[0, step2], -(np.arange(len(step2)) + 1) / 100)
    assert (batch.logprobs[batch.loss_mask == 0] == 0).all()

    # Row 1 answers at once: one step, scored against the gold answers.
    assert batch.finish_reason[1] == EpisodeEnd.ANSWER and batch.num_turns[1] == 1
    assert batch.em[1] == 1.0 and batch.f1[1] == 1.0
    assert sampler.contexts[1] == batch.tokens[1, batch.input_mask[1]].tolist()


def test_step_ids_increase_and_masks_agree(assets):
    tokenizer = assets.tokenizer
    questions = assets.world.split("dev")[:3]
    scripts = [
        ["<search> a </search>", "no action here", "<answer> x </answer>"],
        ["<search> b </search>", "<search> c </search>", "<search> d </search>"],
        ["junk", "junk", "junk"],
    ]
    env_config = dataclasses.replace(ENV, after_observation="<think>")
    batch = rollout(
        ScriptedSampler(tokenizer, scripts),
        P.SearchEnv(assets.retriever, env_config, tokenizer, P.COMPACT_TEMPLATE),
        tokenizer,
        tasks(questions),
        RolloutConfig(max_length=512),
    )
    np.testing.assert_array_equal(batch.loss_mask, (batch.step_id >= 0).astype(np.float32))
    assert not (batch.loss_mask.astype(bool) & ~batch.input_mask).any()
    for b in range(3):
        steps = batch.step_id[b][batch.step_id[b] >= 0]
        assert (np.diff(steps) >= 0).all() and set(steps) == set(range(batch.num_turns[b]))
        # After the prompt, masked tokens are observations, each followed by the forced "<think>",
        # except the last, which the env ends with its forced "<answer>" before the final call.
        after_prompt = np.arange(batch.tokens.shape[1]) > np.argmax(batch.step_id[b] == 0)
        forced = after_prompt & (batch.step_id[b] == -1) & batch.input_mask[b]
        text = tokenizer.decode(batch.tokens[b][forced])
        assert text.count("<think>") == 1 and text.endswith("</information>\n\n<answer>") == (
            b == 1
        )
        assert text.endswith("<answer>")
    # A final call without an answer ends the episode unanswered (Search-R1's final rollout).
    ended = [EpisodeEnd.ANSWER, EpisodeEnd.NO_ANSWER, EpisodeEnd.NO_ANSWER]
    assert batch.finish_reason.tolist() == ended
    assert batch.num_turns.tolist() == [3, 3, 3] and batch.em[1:].tolist() == [0.0, 0.0]


def test_context_cap_truncates_the_episode(assets):
    tokenizer = assets.tokenizer
    question = assets.world.split("dev")[0]
    prompt = P.render_prompt(question.text, P.COMPACT_TEMPLATE)
    cap = len(tokenizer.encode(prompt, add_special_tokens=False)) + 12
    scripts = [["<search> " + "long query " * 10 + "</search>"]]
    batch = rollout(
        ScriptedSampler(tokenizer, scripts),
        P.SearchEnv(assets.retriever, ENV, tokenizer, P.COMPACT_TEMPLATE),
        tokenizer,
        tasks([question]),
        RolloutConfig(max_length=cap),
    )
    assert batch.tokens.shape == (1, cap) and batch.input_mask.all()
    assert batch.finish_reason[0] == EpisodeEnd.TRUNCATED and batch.em[0] == 0.0
    assert batch.loss_mask[0].sum() == 12


def test_prompt_longer_than_the_cap_is_an_error(assets):
    with pytest.raises(ValueError, match="max_length"):
        rollout(
            ScriptedSampler(assets.tokenizer, [["x"]]),
            P.SearchEnv(assets.retriever, ENV, assets.tokenizer, P.COMPACT_TEMPLATE),
            assets.tokenizer,
            [P.QATask("What is the birthplace of X?", ("Y",))],
            RolloutConfig(max_length=8),
        )


class FlakyRetriever:
    """A retriever that raises on its first `failures` calls, then answers like `retriever`."""

    def __init__(self, retriever, failures):
        self.retriever, self.failures, self.calls = retriever, failures, 0

    def retrieve(self, queries, topk):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"retriever unreachable (call {self.calls})")
        return self.retriever.retrieve(queries, topk)


FLAKY_SCRIPTS = [
    ["<search> a </search>", "<answer> x </answer>"],
    ["<answer> y </answer>"],
    ["<search> b </search>", "<search> c </search>", "z </answer>"],
]


def _play_scripted(assets, retriever, config):
    questions = assets.world.split("dev")[:3]
    env = P.SearchEnv(retriever, ENV, assets.tokenizer, P.COMPACT_TEMPLATE)
    sampler = ScriptedSampler(assets.tokenizer, FLAKY_SCRIPTS)
    return rollout(sampler, env, assets.tokenizer, tasks(questions), config)


def test_a_flaky_retriever_is_retried_and_changes_nothing(assets):
    config = RolloutConfig(max_length=512, env_retries=2, env_backoff_s=0.0)
    flaky = FlakyRetriever(assets.retriever, failures=2)
    batch = _play_scripted(assets, flaky, config)
    reference = _play_scripted(assets, assets.retriever, config)
    # Each failed call left the episodes as they were: the retried rollout is the same one.
    assert flaky.calls == 2 + 2  # two failures, then the two steps that search
    for field in ("tokens", "loss_mask", "step_id", "finish_reason", "num_turns"):
        np.testing.assert_array_equal(getattr(batch, field), getattr(reference, field))
    assert batch.steps == reference.steps and batch.answers == ["x", "y", "z"]


def test_a_retriever_that_stays_down_gives_one_clear_error(assets):
    config = RolloutConfig(max_length=512, env_retries=2, env_backoff_s=0.0)
    flaky = FlakyRetriever(assets.retriever, failures=3)
    with pytest.raises(EnvStepError, match="SearchEnv.step failed 3 times at step 0") as error:
        _play_scripted(assets, flaky, config)
    assert "ConnectionError: retriever unreachable (call 3)" in str(error.value)
    assert isinstance(error.value.__cause__, ConnectionError) and flaky.calls == 3


def test_groups_prefill_each_task_once_and_share_a_group_id(assets):
    tokenizer = assets.tokenizer
    questions = assets.world.split("dev")[:2]
    scripts = [  # rows 0-2 play question 0, rows 3-5 question 1
        ["<answer> a </answer>"], ["<search> s </search>", "<answer> b </answer>"], ["junk"] * 4,
        ["<answer> c </answer>"], ["<answer> d </answer>"], ["<answer> e </answer>"],
    ]  # fmt: skip
    sampler = ScriptedSampler(tokenizer, scripts)
    env = P.SearchEnv(assets.retriever, ENV, tokenizer, P.COMPACT_TEMPLATE)
    config = RolloutConfig(max_length=512, group_size=3)
    batch = rollout(sampler, env, tokenizer, tasks(questions), config)
    prompts = [tokenizer.encode(P.render_prompt(q.text, P.COMPACT_TEMPLATE)) for q in questions]
    assert sampler.prefilled == prompts  # one prefill per task, forked to its group
    assert batch.group_id.tolist() == [0, 0, 0, 1, 1, 1]
    for b in range(6):
        n = len(prompts[b // 3])
        np.testing.assert_array_equal(batch.tokens[b, :n], prompts[b // 3])
    assert batch.answers == ["a", "b", None, "c", "d", "e"]
    assert batch.num_turns.tolist() == [1, 2, 3, 1, 1, 1]
    assert batch.finish_reason[2] == EpisodeEnd.NO_ANSWER and batch.em[2] == 0.0


def test_single_turn_env_scores_the_completion(assets):
    # Chain arithmetic: the reward is 1 when the completion is the value of the expression.
    tokenizer = assets.tokenizer
    env = SingleTurnEnv(
        lambda task: f"{task[0]} + {task[1]} = ",
        lambda task, text: {"reward": float(text.strip() == str(sum(task))), "length": len(text)},
        stop_strings=["\n"],
    )
    scripts = [["5\nmore"], ["8"]]
    sampler = ScriptedSampler(tokenizer, scripts)
    batch = rollout(sampler, env, tokenizer, [(2, 3), (4, 5)], RolloutConfig(max_length=64))
    assert batch.reward.tolist() == [1.0, 0.0] and batch.outcome["length"].tolist() == [2.0, 1.0]
    assert batch.answers == ["5", "8"] and batch.num_turns.tolist() == [1, 1]
    assert batch.finish_reason.tolist() == [EpisodeEnd.ANSWER] * 2
    for b, script in enumerate(scripts):
        # Trained tokens are exactly the completion the sampler produced (not cut by the env).
        completion = tokenizer.encode(script[0], add_special_tokens=False)
        np.testing.assert_array_equal(batch.tokens[b][batch.loss_mask[b] > 0], completion)
    with pytest.raises(KeyError, match="no 'em' outcome"):
        _ = batch.em


class ReprefillSampler:
    """A sampler that keeps no cache between calls: every `generate` prefills the whole context.

    The reference for the KV-cache rollout (greedy decoding must agree token for token).
    """

    def __init__(self, sampler: Sampler):
        self.sampler, self.config, self.pad_token_id = sampler, sampler.config, sampler.pad_token_id

    def start(self, prompts, reserve=0):
        self.contexts = [list(p) for p in prompts]
        return self

    def fork(self, k):
        self.contexts = [list(c) for c in self.contexts for _ in range(k)]
        return self

    def generate(self, max_new_tokens, **kwargs):
        generation = self.sampler.start(self.contexts).generate(max_new_tokens, **kwargs)
        for context, new in zip(self.contexts, generation.token_lists()):
            context.extend(new)
        return generation

    def append(self, tokens):
        for context, new in zip(self.contexts, tokens):
            context.extend(new)


@pytest.fixture(scope="module")
def tiny_model(assets):
    tokenizer = assets.tokenizer
    config = ModelConfig(
        family="qwen3",
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        intermediate_size=64,
        qk_norm=True,
        max_position_embeddings=1024,
        eos_token_ids=(tokenizer.eos_token_id,),
        pad_token_id=tokenizer.pad_token_id,
    )
    return Transformer(config, rngs=nnx.Rngs(3))


def _play(assets, sampler, num_questions, config, key=None):
    questions = assets.world.split("dev")[:num_questions]
    env = P.SearchEnv(assets.retriever, ENV, assets.tokenizer, P.COMPACT_TEMPLATE)
    return rollout(sampler, env, assets.tokenizer, tasks(questions), config, key=key)


# Episodes stay far below max_length, so every turn decodes with one budget (one compile).
GREEDY_CONFIG = RolloutConfig(max_step_tokens=8, max_length=512)


def test_rollout_logprobs_match_teacher_forcing(assets, tiny_model):
    batch = _play(assets, Sampler(tiny_model), 3, GREEDY_CONFIG)
    # Several turns with observations forced on top of the cache, per row.
    assert (batch.step_id.max(axis=1) >= 1).all()
    # The sampler's log-probs are log π(token | everything before it), as a full forward gives.
    logits = jax.jit(lambda ids, mask: tiny_model(ids, mask)[0])(batch.tokens, batch.input_mask)
    logp = np.asarray(jax.nn.log_softmax(logits[:, :-1]))
    teacher = np.take_along_axis(logp, batch.tokens[:, 1:, None], axis=-1)[..., 0]
    trained = batch.loss_mask[:, 1:] > 0
    np.testing.assert_allclose(batch.logprobs[:, 1:][trained], teacher[trained], atol=1e-4)
    # Greedy: every sampled token is the argmax of its context.
    np.testing.assert_array_equal(logp.argmax(-1)[trained], batch.tokens[:, 1:][trained])


def test_kv_cache_rollout_equals_reprefill_rollout(assets, tiny_model):
    cached = _play(assets, Sampler(tiny_model), 3, GREEDY_CONFIG)
    reference = _play(assets, ReprefillSampler(Sampler(tiny_model)), 3, GREEDY_CONFIG)
    for field in ("tokens", "input_mask", "loss_mask", "step_id", "finish_reason", "num_turns"):
        np.testing.assert_array_equal(getattr(cached, field), getattr(reference, field))
    np.testing.assert_allclose(cached.logprobs, reference.logprobs, atol=1e-4)


def test_sampled_rollout_is_reproducible_from_its_key(assets, tiny_model):
    config = dataclasses.replace(GREEDY_CONFIG, sampling=SamplingParams(1.0))
    a, b, c = (
        _play(assets, Sampler(tiny_model), 2, config, key=jax.random.key(seed))
        for seed in (0, 0, 1)
    )
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)


def test_a_group_samples_like_its_task_repeated_with_one_prefill(assets, tiny_model):
    config = dataclasses.replace(GREEDY_CONFIG, sampling=SamplingParams(1.0))
    questions = assets.world.split("dev")[:2]
    key = jax.random.key(4)

    def play(task_list, config):
        env = P.SearchEnv(assets.retriever, ENV, assets.tokenizer, P.COMPACT_TEMPLATE)
        return rollout(Sampler(tiny_model), env, assets.tokenizer, task_list, config, key=key)

    grouped = play(tasks(questions), dataclasses.replace(config, group_size=3))
    repeated = play(tasks([q for q in questions for _ in range(3)]), config)
    # Row b draws with fold_in(key, b) either way: forking one prefill changes nothing.
    for field in ("tokens", "input_mask", "step_id", "finish_reason", "num_turns"):
        np.testing.assert_array_equal(getattr(grouped, field), getattr(repeated, field))
    np.testing.assert_allclose(grouped.logprobs, repeated.logprobs, atol=1e-4)
    assert grouped.group_id.tolist() == [0, 0, 0, 1, 1, 1]
    assert repeated.group_id.tolist() == list(range(6))
    # The repeats of a task are different samples.
    assert len({grouped.tokens[b].tobytes() for b in range(3)}) == 3
