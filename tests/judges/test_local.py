"""The local judge's plumbing with a tiny random model and the world tokenizer: its replies are
noise, so every judgement must come back neutral, flagged and counted."""

import pytest
from flax import nnx

from prm.envs.assets import load_world_assets
from prm.judges import JudgeRequest, LocalJudge, make_judge, request_prompts
from prm.models import Transformer, save_pretrained
from tests.helpers.tiny_models import tiny_config
from tests.helpers.worlds import SMALL_VOCAB, SMALL_WORLD

MAX_POSITIONS = 1024


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return load_world_assets(SMALL_WORLD, tmp_path_factory.mktemp("worlds"), SMALL_VOCAB)


@pytest.fixture(scope="module")
def model_and_config(assets):
    eos = assets.tokenizer.eos_token_id
    config = tiny_config(
        "qwen3",
        vocab_size=len(assets.tokenizer),
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=eos,
        eos_token_ids=(eos,),
        pad_token_id=eos,
    )
    return Transformer(config, rngs=nnx.Rngs(0)), config


def requests():
    context = "Question: What is the birthplace of the founder of Gusto Labs?"
    return [
        JudgeRequest(context, "I need the founder of Gusto Labs.", "search", "Gusto Labs", 0),
        JudgeRequest(context, "It is Tamsby.", "answer", "Tamsby", 1, golden_answers=("Tamsby",)),
    ]


def test_a_random_model_gives_neutral_flagged_judgements(assets, model_and_config):
    model, _ = model_and_config
    judge = LocalJudge(model, assets.tokenizer, max_new_tokens=8, batch_size=3, neutral_score=-1)
    judgements = judge.judge(requests())
    assert [(j.kind, j.reasoning, j.action) for j in judgements] == [
        ("search", -1, -1),
        ("answer", -1, -1),
    ]
    assert all(j.reasoning_invalid and j.action_invalid for j in judgements)
    stats = judge.stats.snapshot()
    assert stats == {"prompts": 4, "unparseable": 4, "failed": 0, "fallbacks": 4, "too_long": 0}


def test_replies_are_greedy_and_do_not_depend_on_the_batch(assets, model_and_config):
    model, _ = model_and_config
    prompts = [p for r in requests() for p in request_prompts(r)]
    judge = LocalJudge(model, assets.tokenizer, max_new_tokens=8, batch_size=3)
    replies = judge.complete(prompts)  # a batch of 3 and a padded batch of 1
    assert all(isinstance(r, str) and r for r in replies)
    assert judge.complete(prompts) == replies
    assert judge.complete(prompts[3:]) == replies[3:]
    assert judge.complete(prompts[::-1]) == replies[::-1]


def test_prompts_longer_than_the_context_are_not_run(assets, model_and_config):
    model, _ = model_and_config
    reasoning, query = request_prompts(requests()[0])
    fits, too_long = (len(assets.tokenizer.encode(p)) for p in (reasoning, query))
    assert too_long > fits
    # Exactly room for the reasoning prompt and its reply; the query prompt is not run.
    judge = LocalJudge(model, assets.tokenizer, max_new_tokens=MAX_POSITIONS - fits)
    assert judge.max_prompt_tokens == fits
    assert judge.complete([query]) == [None]
    assert judge.stats["too_long"] == 1
    # One token less room: neither prompt runs; both judgements fall back.
    judge = LocalJudge(model, assets.tokenizer, max_new_tokens=MAX_POSITIONS - fits + 1)
    (judgement,) = judge.judge(requests()[:1])
    assert judgement.reasoning_invalid and judgement.action_invalid
    assert judge.stats.snapshot() == {
        "prompts": 2,
        "unparseable": 0,
        "failed": 2,
        "fallbacks": 2,
        "too_long": 2,
    }


def test_the_registry_builds_a_local_judge_from_a_checkpoint(assets, model_and_config, tmp_path):
    model, config = model_and_config
    save_pretrained(model, config, tmp_path / "judge")
    assets.tokenizer.save_pretrained(tmp_path / "judge")
    judge = make_judge(
        {
            "name": "local",
            "checkpoint": str(tmp_path / "judge"),
            "max_new_tokens": 8,
            "batch_size": 3,
        }
    )
    reference = LocalJudge(model, assets.tokenizer, max_new_tokens=8, batch_size=3)
    prompts = request_prompts(requests()[0])
    assert judge.complete(prompts) == reference.complete(prompts)


def test_the_registry_takes_a_model_the_trainer_already_holds(assets, model_and_config):
    model, _ = model_and_config
    judge = make_judge(
        {"name": "local", "max_new_tokens": 8}, model=model, tokenizer=assets.tokenizer
    )
    assert judge.sampler.model is model and judge.tokenizer is assets.tokenizer
    with pytest.raises(ValueError, match="checkpoint"):
        make_judge({"name": "local"})
