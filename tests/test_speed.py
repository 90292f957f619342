"""hcnn_jax.speed: the XLA:CPU flags set at import, and that XLA honours them."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from hcnn_jax import speed

FLAG = '--xla_cpu_experimental_ynn_fusion_type='


@pytest.fixture(name='jax_not_started')
def jax_not_started_fixture(monkeypatch):
  # Other tests of the session may have started JAX's backends already.
  monkeypatch.setattr(speed, '_backends_started', lambda: False)


def test_missing_flags_are_appended_to_the_users_own(jax_not_started):
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  added = speed.apply_xla_flags(env)
  assert added == speed.CPU_XLA_FLAGS
  assert env['XLA_FLAGS'] == ('--xla_force_host_platform_device_count=4 '
                              f'{FLAG}-individual_convolution')
  assert speed.apply_xla_flags(env) == {}  # idempotent


def test_a_flag_the_user_set_is_left_alone(jax_not_started):
  env = {'XLA_FLAGS': f'{FLAG}individual_dot'}
  assert speed.apply_xla_flags(env) == {}
  assert env['XLA_FLAGS'] == f'{FLAG}individual_dot'
  env = {}
  speed.apply_xla_flags(env)
  assert env['XLA_FLAGS'] == f'{FLAG}-individual_convolution'


def test_nothing_is_set_once_jax_has_started(monkeypatch):
  monkeypatch.setattr(speed, '_backends_started', lambda: True)
  env = {}
  assert speed.apply_xla_flags(env) == {} and env == {}


_PROBE = """
import re, sys
if sys.argv[1] == 'package':
  import hcnn_jax
import jax, jax.numpy as jnp
def f(x, k):
  return jnp.sum(jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                 dimension_numbers=('NHWC', 'HWIO', 'NHWC')) ** 2)
x, k = jnp.ones((2, 32, 32, 32)), jnp.ones((3, 3, 32, 32))  # YNNPACK takes it by default
hlo = jax.jit(jax.grad(f, argnums=(0, 1))).lower(x, k).compile().as_text()
bodies = dict(re.findall(r'^(%[\\w.-]+) [^\\n]*\\{\\n(.*?)^\\}', hlo, re.M | re.S))
with_conv = {name for name, body in bodies.items() if ' convolution(' in body}
ynn = re.findall(r'calls=(%[\\w.-]+)[^\\n]*__ynn_fusion', hlo)
print(len(re.findall(r' convolution\\(', hlo)), sum(c in with_conv for c in ynn))
"""


def _convs_and_ynn_convs(how: str):
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  env['JAX_PLATFORMS'] = 'cpu'
  out = subprocess.run([sys.executable, '-c', _PROBE, how], env=env, capture_output=True,
                       text=True, check=True).stdout.split()
  return int(out[0]), int(out[1])


def test_xla_cpu_keeps_the_convolutions_of_a_gradient_out_of_ynnpack():
  convs, in_ynn = _convs_and_ynn_convs('package')
  assert convs >= 3 and in_ynn == 0  # forward, input and kernel gradients: XLA's own
  # Without the package's flags this jaxlib hands them to YNNPACK (the check can fail).
  assert _convs_and_ynn_convs('plain')[1] > 0


@pytest.mark.parametrize('cin,custom', [(1, True), (6, True), (9, False)])
def test_cpu_first_layers_take_the_gemm_input_gradient(cin, custom):
  x, k = jnp.ones((1, 6, 5, cin)), jnp.ones((3, 3, cin, 4))
  jaxpr = str(jax.make_jaxpr(lambda x, k: speed.conv_general_dilated(
      x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')))(x, k))
  assert ('custom_jvp_call' in jaxpr) == (custom and jax.default_backend() == 'cpu')
  assert 'conv_general_dilated' in jaxpr  # the forward pass is XLA's convolution either way


def _train_step_instructions(monkeypatch, guard):
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  from hcnn_jax.training import parallel, state as state_lib, step as step_lib
  from tests.training import _models
  if guard is not None:
    monkeypatch.setattr(step_lib, 'all_finite', guard)
  model, tx = _models.make_model(3, dropout=False), optax.adam(1e-3)
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = parallel.replicate(
      state_lib.create_train_state(model, tx, jax.random.key(0), _models.INPUT_LENGTH), mesh)
  batch = parallel.shard_batch({'audio': np.zeros((2, _models.INPUT_LENGTH), np.float32),
                                'labels': np.zeros((2, 3), np.float32)}, mesh)
  step = parallel.make_train_step(model, _models.bce, tx, mesh, donate=False)
  return step.lower(state, batch).compile().as_text().count(' = ')


def test_the_non_finite_guard_costs_the_compiler_little(monkeypatch):
  # The guard's flag gates a select over every leaf of the state. Computed as an `all` over one
  # reduction per leaf, XLA copied that chain into each select: this small model's optimised
  # step had 3.2x the instructions of the step without the guard (5,698 against 1,790), and the
  # tiny keyword HCNN's took 147 s to compile instead of 28 s. One reduction adds ~3 %.
  with_guard = _train_step_instructions(monkeypatch, None)
  without = _train_step_instructions(monkeypatch, lambda tree: jnp.array(True))
  assert with_guard <= 1.2 * without, (with_guard, without)


def test_cpu_malloc_settings_only_where_jax_runs_on_the_cpu():
  on = {'HCNN_JAX_CPU_MALLOC': '1'}
  assert speed.apply_cpu_malloc({'JAX_PLATFORMS': 'cpu'}) == {}  # opt-in
  assert speed.apply_cpu_malloc({**on, 'JAX_PLATFORMS': 'cuda'}) == {}
  assert speed.apply_cpu_malloc({**on, 'JAX_PLATFORMS': 'cpu', 'MALLOC_ARENA_MAX': '4'}) == {}
  assert speed.apply_cpu_malloc({**on, 'JAX_PLATFORMS': 'cpu',
                                 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}) == {}
  # Where it applies, it is applied in a fresh process below: mallopt lasts for the process.


_FAULTS = """
import resource, sys
if sys.argv[1] == 'package':
  import hcnn_jax
  assert hcnn_jax._speed.apply_cpu_malloc() == hcnn_jax._speed.CPU_MALLOPT  # set again: same
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.sin(x * 2.0) * 3.0, axis=0))
x = jnp.ones((16, 1024, 1024))  # 64 MB
jax.block_until_ready(f(x))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
  jax.block_until_ready(f(x))
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 6)
"""


@pytest.mark.skipif(not sys.platform.startswith('linux') or platform.libc_ver()[0] != 'glibc',
                    reason="glibc's malloc")
def test_large_buffers_are_not_faulted_in_again_every_step():
  env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
  env.update(JAX_PLATFORMS='cpu', HCNN_JAX_CPU_MALLOC='1')

  def faults(how):
    return int(subprocess.run([sys.executable, '-c', _FAULTS, how], env=env, capture_output=True,
                              text=True, check=True).stdout.split()[-1])
  plain, package = faults('plain'), faults('package')
  # glibc maps each buffer above 32 MB afresh: ~33,600 faults of 4 kB a call here (2-core VM),
  # against 170-5,500 with the package's settings. A kernel with transparent huge pages on for
  # every mapping faults 2-MB pages instead, leaving nothing to compare.
  assert package < 0.5 * plain or plain < 1000, (package, plain)
