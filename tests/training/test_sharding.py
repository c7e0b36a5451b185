import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from prm.training.sharding import (
    DEFAULT_RULES,
    MESH_AXES,
    constrain,
    make_mesh,
    partition_spec,
    path_to_str,
    tree_shardings,
)

MESH = AbstractMesh((2, 2, 2), MESH_AXES)


def test_first_matching_rule_wins():
    rules = ((r"q_proj\.kernel$", ("fsdp", "tensor")), (r"kernel$", ("tensor", None)))
    assert partition_spec("layers.0.attn.q_proj.kernel", (8, 8), MESH, rules) == PartitionSpec(
        "fsdp", "tensor"
    )
    assert partition_spec("layers.0.attn.o_proj.kernel", (8, 8), MESH, rules) == PartitionSpec(
        "tensor", None
    )


def test_no_match_replicates_and_scalars_replicate():
    rules = ((r"kernel$", ("fsdp", "tensor")),)
    assert partition_spec("final_norm.scale", (8,), MESH, rules) == PartitionSpec()
    assert partition_spec("opt_state.0.count", (), MESH, ((r".*", ("fsdp",)),)) == PartitionSpec()


def test_non_divisible_dimension_is_replicated():
    # 6 rows over fsdp=2 divide; 3 columns over tensor=2 do not -> that dimension replicated.
    spec = partition_spec("q_proj.kernel", (6, 3), MESH, DEFAULT_RULES)
    assert spec == PartitionSpec("fsdp", None)
    # A tuple of axes multiplies sizes: data×fsdp = 4 does not divide 6.
    assert partition_spec("x", (6,), MESH, ((r"x", (("data", "fsdp"),)),)) == PartitionSpec(None)


def test_rules_read_back_from_json_lists_work():
    rules = [["q_proj\\.kernel$", [["data", "fsdp"], "tensor"]]]
    assert partition_spec("q_proj.kernel", (8, 6), MESH, rules) == PartitionSpec(
        ("data", "fsdp"), "tensor"
    )


def test_rule_longer_than_rank_is_an_error():
    with pytest.raises(ValueError, match="at most 1 entries"):
        partition_spec("q_proj.bias", (8,), MESH, ((r"bias$", ("fsdp", "tensor")),))


def test_optimizer_moments_get_their_parameter_sharding():
    tree = {"params": {"q_proj": {"kernel": jnp.zeros((4, 4))}}, "count": jnp.zeros(())}
    tree["opt"] = {"mu": tree["params"]}
    mesh = make_mesh({"data": -1})
    shardings = tree_shardings(tree, mesh)
    assert shardings["opt"]["mu"]["q_proj"]["kernel"].spec == PartitionSpec("fsdp", "tensor")
    assert shardings["count"].spec == PartitionSpec()


def test_path_to_str_drops_nnx_value_suffix():
    path = jax.tree_util.tree_flatten_with_path({"layers": [{"kernel": 1}]})[0][0][0]
    assert path_to_str(path) == "layers.0.kernel"


def test_make_mesh_fills_minus_one_and_rejects_bad_shapes():
    n = jax.device_count()
    assert dict(make_mesh({"data": -1, "fsdp": 1, "tensor": 1}).shape) == {
        "data": n,
        "fsdp": 1,
        "tensor": 1,
    }
    with pytest.raises(ValueError, match="Unknown mesh axes"):
        make_mesh({"model": 1})
    with pytest.raises(ValueError, match="At most one"):
        make_mesh({"data": -1, "fsdp": -1})
    with pytest.raises(ValueError, match="needs"):
        make_mesh({"data": n + 1})


def test_constrain_is_identity_without_mesh():
    # With a multi-device mesh it shards: tests/multidevice/test_sharded_train.py.
    x = jnp.arange(4.0)
    assert constrain(x, PartitionSpec("data")) is x
