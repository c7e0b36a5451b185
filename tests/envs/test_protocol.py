import copy
import re
import string
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prm.envs import protocol as P
from prm.envs.synthetic_world import World, WorldConfig
from prm.envs.tokenizer import train_bpe_tokenizer, world_texts


class CharTokenizer:
    """One token per character (id = code point): token counts can be read off the text."""

    chat_template = None

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, **kwargs):
        return "".join(chr(i) for i in ids)


class FakeRetriever:
    """Returns, per query, `topk` passages titled by the query; records every call."""

    def __init__(self):
        self.calls = []

    def retrieve(self, queries, topk):
        self.calls.append(list(queries))
        return [
            [
                {"id": f"{q}-{i}", "contents": f'"{q} {i}"\nabout {q} {i}', "score": 1.0}
                for i in range(topk)
            ]
            for q in queries
        ]


@pytest.fixture(scope="module")
def world_tokenizer():
    return train_bpe_tokenizer(world_texts(World(WorldConfig(seed=0))))


def test_question_and_prompt_formatting():
    assert P.format_question("  who is x ") == "who is x?"
    assert P.format_question("who is x?") == "who is x?"
    prompt = P.render_prompt("who is x", P.COMPACT_TEMPLATE)
    assert prompt.endswith("Question: who is x?\n")
    assert "Question: who is x?\n" in P.render_prompt("who is x")


def test_prompt_uses_the_chat_template_when_the_tokenizer_has_one(world_tokenizer):
    world_tokenizer.chat_template = "{% for m in messages %}<u>{{ m.content }}</u>{% endfor %}<a>"
    try:
        text = P.render_prompt("q", P.COMPACT_TEMPLATE, world_tokenizer)
    finally:
        world_tokenizer.chat_template = None
    assert text == "<u>" + P.COMPACT_TEMPLATE.format(question="q?") + "</u><a>"


def test_truncate_at_earliest_stop():
    assert P.truncate_at_stop("a<answer>x</answer> <search>y</search>") == "a<answer>x</answer>"
    assert P.truncate_at_stop("<search>y</search> tail") == "<search>y</search>"
    assert P.truncate_at_stop("no stop") == "no stop"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>hm</think>\n<search> capital of X </search>", P.Action("search", "capital of X")),
        ("<answer> Paris </answer><answer>Rome</answer>", P.Action("answer", "Paris")),
        ("<search>a</search><answer>b</answer>", P.Action("search", "a")),
        ("<search>a</answer>", P.Action("invalid", reason="<search> is not closed")),
        ("<answer> Par", P.Action("invalid", reason="<answer> is not closed")),
        ("I think so.", P.Action("invalid", reason="no <search> or <answer> block")),
        ("<search>   </search>", P.Action("invalid", reason="empty <search> block")),
        ("<answer>\n</answer>", P.Action("invalid", reason="empty <answer> block")),
        ("<search>multi\nline</search>", P.Action("search", "multi\nline")),
    ],
)
def test_parse_step(text, expected):
    assert P.parse_step(text) == expected


_tagged_text = st.lists(
    st.one_of(
        st.text(max_size=15),
        st.sampled_from([*P.TAGS, "<search", "search>", "</", "<>", "\n"]),
    ),
    max_size=12,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(_tagged_text)
def test_parser_never_raises_and_is_consistent(text):
    action = P.parse_step(text)
    assert action.kind in ("search", "answer", "invalid")
    if action.kind == "invalid":
        assert action.reason and not action.content
    else:
        assert action.content == action.content.strip() and action.content
        assert f"<{action.kind}>" in text and f"</{action.kind}>" in text


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1).filter(lambda q: q.strip() and "</search>" not in q))
def test_parser_recovers_any_query(query):
    assert P.parse_step(f"<search>{query}</search>") == P.Action("search", query.strip())


# Search-R1's parser (generation.py `postprocess_predictions`), kept as the reference for
# parse_step's linear-time scan.
_SEARCH_R1_ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)


def reference_parse_step(text):
    match = _SEARCH_R1_ACTION.search(text)
    if match is None:
        for open_tag in ("<search>", "<answer>"):
            if open_tag in text:
                return P.Action("invalid", reason=f"{open_tag} is not closed")
        return P.Action("invalid", reason="no <search> or <answer> block")
    kind, content = match.group(1), match.group(2).strip()
    if not content:
        return P.Action("invalid", reason=f"empty <{kind}> block")
    return P.Action(kind, content)


# Tags, their fragments and near misses, so that texts hold many overlapping candidate blocks.
_TAG_PIECES = [*P.TAGS, "<search", "search>", "</search", "<answer", "</", "<", ">", "/", " "]
_tag_heavy_text = st.lists(
    st.one_of(st.sampled_from(_TAG_PIECES), st.text(alphabet="ab <>/\n", max_size=4)),
    max_size=25,
).map("".join)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(_tag_heavy_text, _tagged_text, st.text(max_size=60)))
def test_parser_equals_search_r1s_regex(text):
    assert P.parse_step(text) == reference_parse_step(text)


def test_parser_equals_search_r1s_regex_on_random_strings():
    rng = np.random.default_rng(0)
    pieces = [*_TAG_PIECES, *string.ascii_lowercase[:3], "\n", "  "]
    for _ in range(3000):
        text = "".join(rng.choice(pieces, size=rng.integers(0, 30)))
        assert P.parse_step(text) == reference_parse_step(text), text


@pytest.mark.parametrize(
    "text",
    [
        "<search>" * 8192,  # 64 KB: the regex retries every start position to the end
        "<answer>" * 8192,
        "<search><answer>" * 4096,
        "<search>" * 8192 + "</answer>",
        "<answer>" * 8192 + "<search> q </search>",
    ],
)
def test_parser_is_linear_on_long_steps(text):
    # A sanity bound on CPU time (a loaded machine stretches wall time), not a benchmark:
    # Search-R1's regex takes seconds on these.
    started = time.process_time()
    action = P.parse_step(text)
    assert time.process_time() - started < 0.5
    if text.endswith("</search>"):
        assert action == P.Action("search", "q")
    else:
        assert action.kind == "invalid" and action.reason.endswith("is not closed")


def test_upstream_template_is_search_r1s_prompt():
    # Notes §1.2: one paragraph, its parts in this order, then "Question: {question}\n".
    parts = [
        "Answer the given question.",
        "You must conduct reasoning inside <think> and </think> first every time you get new "
        "information.",
        "After reasoning, if you find you lack some knowledge, you can call a search engine by "
        "<search> query </search> and it will return the top searched results between "
        "<information> and </information>.",
        "You can search as many times as your want.",  # upstream's typo, kept
        "If you find no further external knowledge needed, you can directly provide the answer "
        "inside <answer> and </answer>, without detailed illustrations.",
        "For example, <answer> Beijing </answer>.",
        "Question: {question}\n",
    ]
    assert " ".join(parts) == P.SEARCH_R1_UPSTREAM_TEMPLATE
    fields = [f for _, f, _, _ in string.Formatter().parse(P.SEARCH_R1_UPSTREAM_TEMPLATE) if f]
    assert fields == ["question"]
    prompt = P.render_prompt(
        " who got the first nobel prize in physics ", P.SEARCH_R1_UPSTREAM_TEMPLATE
    )
    assert prompt.endswith("</answer>. Question: who got the first nobel prize in physics?\n")
    assert prompt.count("\n") == 1 and "  " not in prompt
    # Our wording stays distinct from upstream's.
    assert P.SEARCH_R1_TEMPLATE != P.SEARCH_R1_UPSTREAM_TEMPLATE


PASSAGES = [
    {"id": "1", "contents": '"Paris"\nParis is a city.', "score": 2.0},
    {"id": "2", "contents": '"Rome"\nRome is old.\nVery old.', "score": 1.0},
]


def test_documents_and_observation_format():
    docs = 'Doc 1(Title: "Paris") Paris is a city.\nDoc 2(Title: "Rome") Rome is old.\nVery old.'
    assert P.format_documents(PASSAGES) == docs
    assert P.format_observation(PASSAGES) == f"\n\n<information>{docs}</information>\n\n"


def test_observation_truncation_keeps_the_closing_tag():
    tok = CharTokenizer()
    wrapper = len("\n\n<information>") + len("</information>\n\n")  # 15 + 16 = 31 chars
    obs = P.format_observation(PASSAGES, tok, max_tokens=wrapper + 5)
    assert obs == "\n\n<information>Doc 1</information>\n\n"
    full = P.format_observation(PASSAGES)
    assert P.format_observation(PASSAGES, tok, max_tokens=len(full)) == full
    with pytest.raises(ValueError, match="cannot hold the <information> wrapper"):
        P.format_observation(PASSAGES, tok, max_tokens=wrapper - 1)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        P.format_observation(PASSAGES, max_tokens=100)


@pytest.mark.parametrize("max_tokens", [12, 20, 33, 60])
def test_observation_truncation_with_bpe_fits_the_budget(world_tokenizer, max_tokens):
    obs = P.format_observation(PASSAGES * 3, world_tokenizer, max_tokens)
    assert len(world_tokenizer.encode(obs)) <= max_tokens
    assert obs.startswith("\n\n<information>") and obs.endswith("</information>\n\n")


def test_hand_built_trajectory_gives_exact_masks():
    segments = [
        P.Segment("ab", False),  # prompt
        P.Segment("cde", True, 0),  # step 0
        P.Segment("fg", False),  # observation
        P.Segment("h", True, 1),  # step 1
    ]
    out = P.tokenize_segments(CharTokenizer(), segments)
    np.testing.assert_array_equal(out.tokens, [97, 98, 99, 100, 101, 102, 103, 104])
    np.testing.assert_array_equal(out.loss_mask, [0, 0, 1, 1, 1, 0, 0, 1])
    np.testing.assert_array_equal(out.step_id, [-1, -1, 0, 0, 0, -1, -1, 1])
    batch = P.collate([out, P.tokenize_segments(CharTokenizer(), segments[:2])], 10, pad_id=0)
    np.testing.assert_array_equal(batch["loss_mask"][1], [0, 0, 1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch["step_id"][1], [-1, -1, 0, 0, 0, -1, -1, -1, -1, -1])
    np.testing.assert_array_equal(batch["input_mask"].sum(1), [8, 5])
    np.testing.assert_array_equal(batch["tokens"][1, 5:], 0)
    assert batch["tokens"].dtype == np.int32 and batch["loss_mask"].dtype == np.float32


def test_observation_tokens_are_never_trainable(world_tokenizer):
    segments = [
        P.Segment("Question: q?\n", False),
        P.Segment("<search> q </search>", True, 0),
        P.Segment(P.format_observation(PASSAGES), False),
        P.Segment("<answer> Paris </answer>", True, 1),
    ]
    out = P.tokenize_segments(world_tokenizer, segments)
    ids = list(out.tokens)
    (open_id,) = world_tokenizer.encode("<information>")
    (close_id,) = world_tokenizer.encode("</information>")
    start, end = ids.index(open_id), ids.index(close_id)
    assert not out.loss_mask[start : end + 1].any()
    # Trainable tokens are exactly the two steps' tokens.
    n_steps = sum(len(world_tokenizer.encode(s.text)) for s in segments if s.trainable)
    assert out.loss_mask.sum() == n_steps


def test_bad_segments_and_batches_raise():
    with pytest.raises(ValueError, match="needs step_index >= 0"):
        P.Segment("x", True)
    with pytest.raises(ValueError, match="step_index -1"):
        P.Segment("x", False, 2)
    out = P.tokenize_segments(CharTokenizer(), [P.Segment("abcdef", False)])
    with pytest.raises(ValueError, match="6 tokens > max_len=4"):
        P.collate([out], 4, 0)
    with pytest.raises(ValueError, match="no trajectories"):
        P.collate([], 4, 0)


def test_outcome_scores():
    assert P.outcome_scores("the Paris", ["Paris"]) == (1.0, 1.0)  # articles are dropped
    # pred tokens {paris, france}, gold {paris}: P = 1/2, R = 1, F1 = 2·(1/2)/(3/2) = 2/3.
    em, f1 = P.outcome_scores("Paris France", ["Rome", "Paris"])
    assert em == 0.0 and f1 == pytest.approx(2 / 3)
    assert P.outcome_scores(None, ["Paris"]) == (0.0, 0.0)


def qa_tasks(golds):
    return [P.QATask(f"q{i + 1}", (gold,)) for i, gold in enumerate(golds)]


def test_env_runs_batched_episodes():
    retriever = FakeRetriever()
    env = P.SearchEnv(retriever, P.EnvConfig(topk=2, max_turns=2, max_obs_tokens=None))
    prompts = env.reset(qa_tasks(["Paris", "Rome", "Oslo"]))
    assert prompts[0] == P.render_prompt("q1")

    results = env.step(
        ["<search> a </search> trailing text", "no action", "<answer> Oslo </answer>"]
    )
    assert retriever.calls == [["a"]]  # one batched call, only for the search
    assert results[0].step_text == "<search> a </search>"
    passages = retriever.retrieve(["a"], 2)[0]
    assert results[0].observation == P.format_observation(passages)
    assert results[0].info == {"query": "a", "passages": passages}
    assert (
        results[1].action.kind == "invalid" and results[1].observation == P.INVALID_ACTION_FEEDBACK
    )
    assert results[2].done and results[2].reward == 1.0 and results[2].observation == ""

    results = env.step(["<answer>paris</answer>", "<search>b</search>", None])
    assert results[0].done and results[0].reward == 1.0
    assert not results[1].done and results[2] is None  # no text, no step
    # q2 used both search-enabled turns; its final call cannot search and scores 0.
    results = env.step([None, "<search> c </search>", None])
    assert results[1].done and results[1].reward == 0.0 and results[1].observation == ""
    assert results[1].info == {}
    assert env.done == [True, True, True]
    assert [e.turns for e in env.episodes] == [2, 3, 1]
    assert env.episodes[1].queries == ["b"]  # the final call's search is not executed
    kinds = [(s.trainable, s.step_index) for s in env.episodes[1].segments]
    assert kinds == [(False, -1), (True, 0), (False, -1), (True, 1), (False, -1), (True, 2)]
    assert env.outcomes() == [
        {"reward": 1.0, "em": 1.0, "f1": 1.0},
        {"reward": 0.0, "em": 0.0, "f1": 0.0},
        {"reward": 1.0, "em": 1.0, "f1": 1.0},
    ]


def test_env_forced_answer_before_the_final_call():
    env = P.SearchEnv(
        FakeRetriever(),
        P.EnvConfig(
            max_turns=2, max_obs_tokens=None, forced_answer="\n<answer>", after_observation="<t>"
        ),
    )
    env.reset(qa_tasks(["Paris"]))
    (result,) = env.step(["<search> q </search>"])
    assert result.observation.endswith("</information>\n\n<t>")
    (result,) = env.step(["<search> r </search>"])
    # The forced answer replaces `after_observation` before the final call.
    assert result.observation.endswith("</information>\n\n\n<answer>")
    assert env.episodes[0].segments[-1] == P.Segment(result.observation, False)
    (result,) = env.step([" Paris </answer>"])
    assert result.done and result.reward == 1.0 and result.action == P.Action("answer", "Paris")
    assert env.episodes[0].segments[-1] == P.Segment(" Paris </answer>", True, 2)


class FlakyRetriever(FakeRetriever):
    """Raises on its first `failures` calls (a retrieval server that is down), then answers."""

    def __init__(self, failures):
        super().__init__()
        self.failures = failures

    def retrieve(self, queries, topk):
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("retriever unreachable")
        return super().retrieve(queries, topk)


def test_a_failed_retrieval_leaves_every_episode_as_it_was():
    config = P.EnvConfig(topk=1, max_turns=1, max_obs_tokens=None, forced_answer="<answer>")
    golds = ["Paris", "Rome", "Oslo", "Bern"]
    first = ["<search> a </search>", "<search> b </search>", None, None]
    # One call with an answer (after the forced opening), a final call without an answer, a
    # search and an invalid step; the retriever fails on it once.
    texts = ["Paris </answer>", "junk", "<search> c </search>", "junk"]
    retriever = FlakyRetriever(failures=0)
    env = P.SearchEnv(retriever, config)
    env.reset(qa_tasks(golds))
    env.step(first)
    before = copy.deepcopy(env.episodes)
    retriever.failures = 1
    with pytest.raises(ConnectionError):
        env.step(texts)
    assert env.episodes == before and env.done == [False] * 4
    # The retry applies the step once, as if the failure never happened.
    results = env.step(texts)
    reference = P.SearchEnv(FakeRetriever(), config)
    reference.reset(qa_tasks(golds))
    reference.step(first)
    assert results == reference.step(texts) and env.episodes == reference.episodes
    assert env.done == [True, True, False, False] and env.outcomes()[0]["em"] == 1.0


def test_env_errors():
    with pytest.raises(ValueError, match="give SearchEnv a tokenizer"):
        P.SearchEnv(FakeRetriever(), P.EnvConfig(max_obs_tokens=100))
    env = P.SearchEnv(FakeRetriever(), P.EnvConfig(max_obs_tokens=None))
    with pytest.raises(ValueError, match="string `question`"):
        env.reset([("a", ["x"])])
    with pytest.raises(ValueError, match="nonempty list"):
        env.reset([P.QATask("a", ())])
    env.reset(qa_tasks(["x"]))
    with pytest.raises(ValueError, match="2 texts for 1 episodes"):
        env.step(["x", "y"])
    env.step(["<answer> x </answer>"])
    with pytest.raises(ValueError, match="episode 0 is over"):
        env.step(["<answer> x </answer>"])
