import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from prm.envs import protocol
from prm.envs.synthetic_world import World, WorldConfig
from prm.envs.tokenizer import END_OF_TEXT, build_world_tokenizer, train_bpe_tokenizer, world_texts


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig(seed=1))


@pytest.fixture(scope="module")
def tokenizer_dir(world, tmp_path_factory):
    path = tmp_path_factory.mktemp("world_tokenizer")
    build_world_tokenizer(world, path)
    return path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    # Loaded exactly as a real model's tokenizer is: a local HF directory, no network.
    return AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)


def test_vocab_size_and_special_tokens(tokenizer):
    assert len(tokenizer) == 1024
    assert tokenizer.eos_token == tokenizer.pad_token == END_OF_TEXT
    assert tokenizer.convert_tokens_to_ids(END_OF_TEXT) < 1024


def test_round_trip_on_world_text(world, tokenizer):
    for text in list(world_texts(world))[:500]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(st.text(max_size=20), st.sampled_from(protocol.TAGS)), min_size=1, max_size=8
    )
)
def test_round_trip_on_arbitrary_text_with_tags(tokenizer, pieces):
    text = "".join(pieces)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text


def test_tags_are_single_tokens_everywhere(tokenizer):
    for tag in protocol.TAGS:
        (tag_id,) = tokenizer.encode(tag, add_special_tokens=False)
        for context in (f"x{tag}y", f" {tag} ", f"{tag}{tag}", f"Doc 1{tag}1954"):
            ids = tokenizer.encode(context, add_special_tokens=False)
            assert ids.count(tag_id) == context.count(tag)
    # Tags survive decoding with special tokens skipped (Search-R1 decodes that way).
    ids = tokenizer.encode("<search> q </search>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<search> q </search>"
    assert [len(s) for s in protocol.stop_token_sequences(tokenizer)] == [1, 1]


def test_saved_and_loaded_tokenizers_agree(world, tokenizer):
    trained = train_bpe_tokenizer(world_texts(world))
    text = protocol.render_prompt(world.questions[0].text, protocol.COMPACT_TEMPLATE)
    assert trained.encode(text) == tokenizer.encode(text)


def test_training_is_deterministic(world, tokenizer_dir, tmp_path):
    build_world_tokenizer(world, tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (
        tokenizer_dir / "tokenizer.json"
    ).read_bytes()


def test_world_passages_fit_the_small_policy(world, tokenizer):
    # Passages are ~20 tokens so that top-3 observations stay near 80 tokens.
    lengths = [len(tokenizer.encode(row["contents"])) for row in world.corpus_rows()]
    assert max(lengths) <= 40
    assert sum(lengths) / len(lengths) <= 30


def test_too_small_vocab_raises():
    with pytest.raises(ValueError, match="vocab_size must be >= 265"):
        train_bpe_tokenizer(["abc"], vocab_size=100)
