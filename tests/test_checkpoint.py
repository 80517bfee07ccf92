"""Tests for hpunet_jax.checkpoint."""
import os
import shutil
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hpunet_jax.infra import checkpoint


class TrainState(NamedTuple):
  step: jax.Array
  params: Any
  opt_state: Any
  geco: Any
  rng: jax.Array


def _make_state(seed, key_fn=jax.random.key):
  """A small train state shaped like the real one (Haiku params, Adam state).

  Built from numpy values: op-by-op jax calls each compile, which is slow here.
  """
  np_rng = np.random.default_rng(seed)
  def params_like(scale):
    normal = lambda *shape: jnp.asarray(scale * np_rng.normal(size=shape), jnp.float32)
    return {"encoder/conv": {"w": normal(3, 3, 1, 4), "b": normal(4)},
            "decoder/logits": {"w": jnp.full((1, 1, 4, 2), float(seed))}}
  params = params_like(1.0)
  opt_state = optax.adam(1e-3).init(params)
  # Non-zero moments and count, as after some updates.
  opt_state = (opt_state[0]._replace(count=jnp.int32(seed), mu=params_like(0.1),
                                     nu=params_like(0.01)),) + tuple(opt_state[1:])
  geco = {"lagrange_multiplier": jnp.float32(1.5 + seed), "ema": jnp.float32(-2.0)}
  return TrainState(step=jnp.int32(100 + seed), params=params, opt_state=opt_state,
                    geco=geco, rng=key_fn(seed))


def _assert_states_equal(restored, expected):
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    if jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
      assert got.dtype == want.dtype
      got, want = jax.random.key_data(got), jax.random.key_data(want)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("key_fn", [jax.random.key, jax.random.PRNGKey],
                         ids=["typed_key", "raw_key"])
def test_round_trip_with_extra(tmp_path, key_fn):
  state = _make_state(1, key_fn)
  extra = {"data_position": 1234, "epoch": 2, "note": "hello", "list": [1, 2]}
  with checkpoint.Checkpointer(tmp_path / "checkpoints") as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.save(101, state, extra, wait=True)
    assert ckpt.latest_step() == 101
    restored, restored_extra = ckpt.restore(_make_state(0, key_fn))
  _assert_states_equal(restored, state)
  assert isinstance(restored, TrainState)
  assert restored_extra == extra


def test_keys_restore_across_key_kinds(tmp_path):
  typed = _make_state(2, jax.random.key)
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, typed, wait=True)
    as_raw, extra = ckpt.restore(_make_state(0, jax.random.PRNGKey))
  assert extra == {}
  assert as_raw.rng.dtype == jnp.uint32
  np.testing.assert_array_equal(as_raw.rng, jax.random.key_data(typed.rng))

  raw = _make_state(3, jax.random.PRNGKey)
  with checkpoint.Checkpointer(tmp_path / "raw") as ckpt:
    ckpt.save(1, raw, wait=True)
    as_typed, _ = ckpt.restore(_make_state(0, jax.random.key))
  assert jax.dtypes.issubdtype(as_typed.rng.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(as_typed.rng), raw.rng)


def test_keep_last_n_and_specific_step(tmp_path):
  with checkpoint.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    for step in (10, 20, 30, 40):
      ckpt.save(step, _make_state(step), {"step": step})
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [30, 40]
    # A step that is not newer than the latest is skipped, not an error.
    assert not ckpt.save(40, _make_state(0))
  with checkpoint.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    assert ckpt.latest_step() == 40
    state, extra = ckpt.restore(_make_state(0), step=30)
    _assert_states_equal(state, _make_state(30))
    assert extra == {"step": 30}
    with pytest.raises(FileNotFoundError, match="step 10"):
      ckpt.restore(_make_state(0), step=10)


def test_async_save_allows_donating_the_state(tmp_path):
  state = _make_state(4)
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(4, state)
    # What donating the state to the next train step does to its buffers.
    for leaf in jax.tree.leaves(state):
      leaf.delete()
    restored, _ = ckpt.restore(_make_state(0))
  _assert_states_equal(restored, _make_state(4))


def test_restore_onto_named_sharding(tmp_path):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(5, _make_state(5), wait=True)
    target = jax.device_put(_make_state(0), replicated)
    restored, _ = ckpt.restore(target)
    # Abstract targets (as from `jax.eval_shape` of the init) work the same way.
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), target)
    restored_from_abstract, _ = ckpt.restore(abstract)
  for state in (restored, restored_from_abstract):
    _assert_states_equal(state, _make_state(5))
    for leaf in jax.tree.leaves(state):
      assert leaf.sharding == replicated


def test_restore_errors_name_the_directory(tmp_path):
  directory = tmp_path / "empty_ckpts"
  with checkpoint.Checkpointer(directory) as ckpt:
    with pytest.raises(FileNotFoundError, match="empty_ckpts"):
      ckpt.restore(_make_state(0))
    ckpt.save(1, _make_state(1), wait=True)
    wrong = _make_state(0)._replace(params={"other": {"w": jnp.zeros(3)}})
    with pytest.raises(ValueError, match="empty_ckpts(.|\n)*other.w"):
      ckpt.restore(wrong)
    wrong_shape = _make_state(0)
    wrong_shape.params["decoder/logits"]["w"] = jnp.zeros((1, 1, 4, 3))
    with pytest.raises(ValueError, match="shape"):
      ckpt.restore(wrong_shape)


def test_unfinished_save_is_ignored(tmp_path):
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _make_state(1), wait=True)
  # What an interrupted save of step 2 leaves behind: orbax's temporary
  # directory, here even with complete contents.
  unfinished = tmp_path / "2.orbax-checkpoint-tmp-1700000000"
  shutil.copytree(tmp_path / "1", unfinished)
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() == 1
    assert ckpt.all_steps() == [1]
    state, _ = ckpt.restore(_make_state(0))
    _assert_states_equal(state, _make_state(1))
  assert not os.path.exists(unfinished)


def _data_files(step_dir):
  """The state's tensorstore data files (under `.../d/`), largest first.

  Large arrays go, compressed, to files of their own; OCDBT's b-tree nodes
  (with small arrays inline) carry a CRC-32C, those data files do not.
  """
  files = [os.path.join(root, name)
           for root, _, names in os.walk(os.path.join(step_dir, "state"))
           if os.path.basename(root) == "d" for name in names]
  return sorted(files, key=os.path.getsize, reverse=True)


def flip_byte(step_dir):
  """Flips one byte in the middle of the largest data file of a checkpoint step.

  Orbax restores that silently (values change); see `_big_state`.
  """
  path = _data_files(step_dir)[0]
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0x40
    f.seek(0)
    f.write(data)


def _big_state(seed):
  """`_make_state(seed)` with a weight large enough for a data file of its own."""
  state = _make_state(seed)
  big = np.random.default_rng(seed).normal(size=(64, 64)).astype(np.float32)
  return state._replace(params={**state.params, "decoder/big": {"w": jnp.asarray(big)}})


def truncate_data(step_dir):
  """Cuts the largest data file of a checkpoint step in half."""
  path = _data_files(step_dir)[0]
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", [flip_byte, truncate_data], ids=["flipped_byte", "truncated"])
def test_corrupt_latest_falls_back_to_the_newest_valid_and_keeps_it(tmp_path, damage):
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _big_state(1), {"n": 1}, wait=True)
    ckpt.save(2, _big_state(2), {"n": 2}, wait=True)
  damage(str(tmp_path / "2"))
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoint.CorruptCheckpointError, match=r"step 2 in .*(corrupt|read)"):
      ckpt.restore(_big_state(0))
    found = ckpt.restore_newest_valid(_big_state(0))
    assert found.step == 1 and found.extra == {"n": 1}
    assert [s for s, _ in found.bad_steps] == [2]
    _assert_states_equal(found.state, _big_state(1))
    assert ckpt.newest_verified_step(_big_state(0)) == 1
    assert ckpt.all_steps() == [1, 2]          # nothing deleted
    moved = ckpt.set_aside(2)
    assert ckpt.all_steps() == [1] and os.path.isdir(moved)
    assert os.path.dirname(os.fspath(moved)) == os.fspath(tmp_path) + ".corrupt"
    assert ckpt.save(2, _big_state(3), wait=True)   # the step can be written again


def test_no_checkpoint_verifies_names_them_all(tmp_path):
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _big_state(1), wait=True)
  flip_byte(str(tmp_path / "1"))
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoint.CorruptCheckpointError, match="step 1"):
      ckpt.restore_newest_valid(_big_state(0))
  with checkpoint.Checkpointer(tmp_path / "none") as ckpt:
    assert ckpt.restore_newest_valid(_make_state(0)) is None


def test_read_only_creates_nothing_and_keeps_temporary_directories(tmp_path):
  with pytest.raises(FileNotFoundError, match="typo"):
    checkpoint.Checkpointer(tmp_path / "typo" / "checkpoints", read_only=True)
  assert not os.path.exists(tmp_path / "typo")
  with checkpoint.Checkpointer(tmp_path / "c") as ckpt:
    ckpt.save(1, _make_state(1), wait=True)
  in_flight = tmp_path / "c" / "2.orbax-checkpoint-tmp-1700000000"
  os.makedirs(in_flight)
  with checkpoint.Checkpointer(tmp_path / "c", read_only=True) as ckpt:
    _assert_states_equal(ckpt.restore(_make_state(0))[0], _make_state(1))
    with pytest.raises(PermissionError):
      ckpt.save(3, _make_state(3))
  assert os.path.isdir(in_flight)


@pytest.mark.parametrize("damage", [flip_byte, truncate_data], ids=["flipped_byte", "truncated"])
def test_restore_subtree_reads_only_the_parameters_verified_with_fallback(tmp_path, damage):
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _big_state(1), {"n": 1}, wait=True)
    ckpt.save(2, _big_state(2), {"n": 2}, wait=True)
  with checkpoint.Checkpointer(tmp_path, read_only=True) as ckpt:
    newest = ckpt.restore_subtree(("params",))
    assert newest.step == 2 and newest.bad_steps == [] and newest.extra == {"n": 2}
    assert set(newest.state) == set(_big_state(2).params)   # no optimiser, no RNG
    np.testing.assert_array_equal(newest.state["decoder/big"]["w"],
                                  _big_state(2).params["decoder/big"]["w"])
    with pytest.raises(KeyError, match="no params.absent"):
      ckpt.restore_subtree(("params", "absent"))
  damage(str(tmp_path / "2"))
  with checkpoint.Checkpointer(tmp_path, read_only=True) as ckpt:
    with pytest.raises(checkpoint.CorruptCheckpointError, match="step 2"):
      ckpt.restore_subtree(("params",), step=2)
    found = ckpt.restore_subtree(("params",))
    assert found.step == 1 and [s for s, _ in found.bad_steps] == [2]
    np.testing.assert_array_equal(found.state["decoder/big"]["w"],
                                  _big_state(1).params["decoder/big"]["w"])
    assert ckpt.all_steps() == [1, 2]          # a reader moves nothing
