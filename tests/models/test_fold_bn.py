"""fold_bn: inference with each BatchNorm folded into its conv gives the unfolded outputs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcnn_jax.models import blocks
from hcnn_jax.models.hcnn import build_hcnn


def with_random_statistics(variables, seed=0):
  """Running statistics and affine parameters away from their initial 0 / 1."""
  rng = np.random.default_rng(seed)
  draw = {'mean': lambda s: rng.normal(0, 0.3, s), 'var': lambda s: rng.uniform(0.5, 2.0, s),
          'scale': lambda s: rng.uniform(-1.5, 1.5, s), 'bias': lambda s: rng.normal(0, 0.2, s)}

  def leaf(path, value):
    key = path[-1].key
    return jnp.asarray(draw[key](value.shape), jnp.float32) if key in draw else value
  return jax.tree_util.tree_map_with_path(leaf, variables)


@pytest.mark.parametrize('block', [blocks.ConvBlock2d, blocks.ResBlock2dMP])
def test_blocks_infer_the_same_and_train_unchanged(block):
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 10, 4)), jnp.float32)
  plain, folded = block(4, (2, 2)), block(4, (2, 2), fold_bn=True)
  variables = plain.init(jax.random.PRNGKey(0), x)
  assert (jax.tree_util.tree_structure(folded.init(jax.random.PRNGKey(0), x))
          == jax.tree_util.tree_structure(variables))
  variables = with_random_statistics(variables)
  want = plain.apply(variables, x)
  assert float(jnp.abs(want).max()) > 0.1
  np.testing.assert_allclose(np.asarray(folded.apply(variables, x)), np.asarray(want),
                             rtol=1e-5, atol=1e-5)
  train = [m.apply(variables, x, True, mutable=['batch_stats']) for m in (plain, folded)]
  np.testing.assert_array_equal(np.asarray(train[1][0]), np.asarray(train[0][0]))


@pytest.mark.parametrize('dtype,tolerance', [(jnp.float32, 1e-5), (jnp.bfloat16, 0.05)])
def test_hcnn_inference_with_folded_batch_norms(dtype, tolerance):
  audio = jax.random.uniform(jax.random.PRNGKey(0), (3, 16_000), minval=-1, maxval=1)
  plain = build_hcnn(5, width=4, variant='keywords', dtype=dtype)
  folded = build_hcnn(5, width=4, variant='keywords', dtype=dtype, fold_bn=True)
  assert folded.backend.fold_bn
  variables = with_random_statistics(plain.init(jax.random.PRNGKey(1), audio[:1], train=False))
  want = jax.jit(lambda v: plain.apply(v, audio))(variables)
  got = jax.jit(lambda v: folded.apply(v, audio))(variables)
  assert got.dtype == jnp.float32 and got.shape == (3, 5)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0,
                             atol=tolerance * float(jnp.abs(want).max()))
