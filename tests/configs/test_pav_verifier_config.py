"""configs/pav_verifier.py options."""

from configs import chain_sft
from configs.pav_verifier import get_config
from prm.training.loop import warm_start_name


def test_problem_range_and_warm_start_options():
    config = get_config("min_ops=2,max_ops=4,sft_steps=1000")
    assert (config.problems.min_ops, config.problems.max_ops) == (2, 4)
    assert config.warm_start.total_steps == 1000
    # The default warm start is the one configs/chain_sft.py trains (one cache entry, shared).
    assert get_config().warm_start.to_dict() == chain_sft.get_config().to_dict()
    assert warm_start_name(get_config("sft_steps=1000").warm_start) != warm_start_name(
        get_config().warm_start
    )
