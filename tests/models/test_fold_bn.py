"""fold_batchnorm: inference on variables with each BatchNorm folded into its conv gives the
unfolded outputs; the blocks refuse to train on them; other layers are left as they are."""
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


@pytest.mark.parametrize('block,convs', [(blocks.ConvBlock2d, 1), (blocks.ResBlock2dMP, 2)])
def test_blocks_infer_the_same_on_folded_variables(block, convs):
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 10, 4)), jnp.float32)
  module = block(4, (2, 2))
  variables = with_random_statistics(module.init(jax.random.PRNGKey(0), x))
  folded = blocks.fold_batchnorm(variables)
  # Only the convs are left, with a bias each; no statistics.
  assert set(folded) == {'params'}
  assert set(folded['params']) == {f'Conv_{i}' for i in range(convs)}
  want = module.apply(variables, x)
  assert float(jnp.abs(want).max()) > 0.1
  np.testing.assert_allclose(np.asarray(module.apply(folded, x)), np.asarray(want),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='fold_batchnorm.*inference'):
    module.apply(folded, x, True, mutable=['batch_stats'])


@pytest.mark.parametrize('dtype,tolerance', [(jnp.float32, 1e-5), (jnp.bfloat16, 0.05)])
def test_hcnn_inference_with_folded_batch_norms(dtype, tolerance):
  audio = jax.random.uniform(jax.random.PRNGKey(0), (3, 16_000), minval=-1, maxval=1)
  model = build_hcnn(5, width=4, variant='keywords', dtype=dtype)
  variables = with_random_statistics(model.init(jax.random.PRNGKey(1), audio[:1], train=False))
  folded = blocks.fold_batchnorm(variables)
  # The seven blocks lose their BatchNorms; the front-end's and the head's stay.
  stats = folded['batch_stats']
  assert set(stats['backend']) == {'bn'} and 'hstft_bn' in stats['frontend']
  assert all('BatchNorm_0' not in folded['params']['backend'][f'layer{i}'] for i in range(1, 8))
  want = jax.jit(lambda v: model.apply(v, audio))(variables)
  got = jax.jit(lambda v: model.apply(v, audio))(folded)
  assert got.dtype == jnp.float32 and got.shape == (3, 5)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0,
                             atol=tolerance * float(jnp.abs(want).max()))


def test_fold_leaves_other_layers_alone():
  """Scopes that are not a ConvBlock2d / ResBlock2dMP (here a 3x1 conv before a BatchNorm, and a
  conv without a BatchNorm) come back unchanged."""
  conv = {'kernel': jnp.ones((3, 1, 2, 2)), 'bias': jnp.zeros(2)}
  bn = {'scale': jnp.ones(2), 'bias': jnp.zeros(2)}
  stats = {'mean': jnp.zeros(2), 'var': jnp.ones(2)}
  variables = {'params': {'a': {'Conv_0': conv, 'BatchNorm_0': bn},
                          'b': {'Conv_0': {**conv, 'kernel': jnp.ones((3, 3, 2, 2))}}},
               'batch_stats': {'a': {'BatchNorm_0': stats}}}
  out = blocks.fold_batchnorm(variables)
  assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(variables)
