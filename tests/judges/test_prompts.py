import pytest

from prm.judges import JudgeRequest, PromptJudge, parse_score, request_prompts


@pytest.mark.parametrize(
    "reply, score",
    [
        ("<explanation>fine</explanation><score>1</score>", 1),
        ("<explanation>fine</explanation><score>+1</score>", 1),
        ("<explanation>meh</explanation><score>0</score>", 0),
        ("<explanation>bad</explanation><score>-1</score>", -1),
        ("<score> -1 </score>", -1),  # whitespace inside the tag
        ("<score>\n1\n</score> trailing text", 1),
        ("1. Relevance: good. <score>0</score>", 0),  # numbers outside the tag are ignored
        ("", None),
        ("Score: 1", None),  # upstream's fallback; not here
        ("The first number is 1.", None),  # upstream's first-number fallback; not here
        ("<score>2</score>", None),  # out of range (upstream does not clip)
        ("<score>1.0</score>", None),
        ("<score>0.5</score>", None),
        ("<score>-0</score>", None),
        ("<score>one</score>", None),
        ("<score></score>", None),
        ("<score>1", None),  # unclosed
        ("<SCORE>1</SCORE>", None),
        ("<score>1</score><score>1</score>", None),  # more than one score
        ("<score>1</score> or <score>-1</score>", None),
    ],
)
def test_parse_score_table(reply, score):
    assert parse_score(reply) == score


def search_request(**fields) -> JudgeRequest:
    defaults = dict(
        context="Question: Who founded Gusto Labs?",
        think="I need the founder of Gusto Labs.",
        kind="search",
        content="founder of Gusto Labs",
        step_index=0,
    )
    return JudgeRequest(**{**defaults, **fields})


def test_prompts_carry_the_slate_3_3_fields_in_order():
    reasoning, query = request_prompts(search_request())
    for prompt in (reasoning, query):
        assert prompt.index("Context: Question: Who founded Gusto Labs?") < prompt.index("1. ")
        assert prompt.index("+1 (") < prompt.index("0 (") < prompt.index("-1 (")
        assert prompt.rstrip().endswith("where N is -1, 0 or 1.")
        assert "<explanation>your explanation</explanation><score>N</score>" in prompt
    assert "Current Thinking Step: I need the founder of Gusto Labs." in reasoning
    assert "founder of Gusto Labs </search>" not in reasoning
    assert "Thinking before this query: I need the founder" in query
    assert query.index("Thinking before this query") < query.index("Generated Query: founder")
    assert "Generated Query" not in reasoning
    assert [f"{i}. " in reasoning for i in range(1, 6)] == [True] * 5


def test_answer_prompt_shows_the_first_gold_unless_asked_for_all():
    answer = search_request(kind="answer", content="Gusto", golden_answers=("Gusto Labs", "Gusto"))
    _, first_only = request_prompts(answer)
    _, every = request_prompts(answer, all_golden_answers=True)
    assert "Ground Truth Answer: Gusto Labs\n" in first_only
    assert "Ground Truth Answer: Gusto Labs | Gusto\n" in every
    assert "Predicted Answer: Gusto\n" in first_only
    assert "(CORRECT)" in first_only and "(PARTIALLY CORRECT)" in first_only


def test_empty_context_reads_none():
    reasoning, _ = request_prompts(search_request(context=""))
    assert "Context: None\n" in reasoning


class ScriptedJudge(PromptJudge):
    """Replies from a table keyed by the prompt's kind."""

    def __init__(self, replies, **kwargs):
        super().__init__(**kwargs)
        self.replies = replies

    def complete(self, prompts):
        return [
            self.replies["reasoning" if "Current Thinking Step" in p else "action"] for p in prompts
        ]


def test_prompt_judge_assembles_scores_and_falls_back_to_neutral():
    requests = [search_request(), search_request(kind="answer", golden_answers=("x",))]
    judge = ScriptedJudge({"reasoning": "<score>1</score>", "action": "<score>-1</score>"})
    judgements = judge.judge(requests)
    assert [(j.kind, j.reasoning, j.action) for j in judgements] == [
        ("search", 1, -1),
        ("answer", 1, -1),
    ]
    assert not any(j.reasoning_invalid or j.action_invalid for j in judgements)

    judge = ScriptedJudge({"reasoning": None, "action": "no score"}, neutral_score=-1)
    judgements = judge.judge(requests)
    assert [(j.reasoning, j.action) for j in judgements] == [(-1, -1), (-1, -1)]
    assert all(j.reasoning_invalid and j.action_invalid for j in judgements)
    assert judge.stats.snapshot() == {"prompts": 4, "unparseable": 2, "failed": 2, "fallbacks": 4}
    with pytest.raises(ValueError, match="neutral_score"):
        ScriptedJudge({}, neutral_score=0.5)
