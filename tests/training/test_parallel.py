"""Data parallelism: 1 device ≡ N devices, the collectives of the compiled step, multi-host set-up.

The multi-device checks run `_multidevice_worker.py` once in a subprocess with 8 fake CPU devices
(`--xla_force_host_platform_device_count` only takes effect before JAX starts).
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from hcnn_jax.training import multihost, parallel
from tests.training import _models

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def worker():
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
  proc = subprocess.run([sys.executable, '-m', 'tests.training._multidevice_worker'], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_one_device_and_four_devices_train_to_the_same_parameters(worker):
  eq = worker['equivalence']
  assert eq['steps'] == [3, 3]
  # The runs moved the parameters and statistics far more than they differ.
  assert eq['params_moved'] > 1e-2 and eq['stats_moved'] > 1e-2
  # One device sums the batch at once, four sum their quarters and pmean them: other float32
  # orders, compounded over three momentum steps (5.7e-7 and 4.6e-7 relative seen). 1e-4 stays
  # ~700x below how far the parameters moved (7.5e-2).
  assert eq['params_diff'] <= 1e-4 * max(1.0, eq['params_scale']), eq
  assert eq['stats_diff'] <= 1e-5, eq
  np.testing.assert_allclose(eq['losses1'], eq['losses4'], rtol=1e-4)


def test_dropout_run_on_four_devices_repeats_exactly(worker):
  assert worker['dropout']['rerun_diff'] == 0.0


def test_sharded_eval_matches_one_device_and_rejects_indivisible_batches(worker):
  ev = worker['eval']
  assert ev['shapes'] == [[8, 3], [8]]
  assert ev['probs_diff'] <= 1e-6 and ev['loss_diff'] <= 1e-6
  assert 'multiple of 4' in ev['indivisible_error'] and "'audio'" in ev['indivisible_error']


@pytest.mark.parametrize('model', ['collectives', 'hcnn_collectives'])
def test_train_step_compiles_to_one_gradient_all_reduce(worker, model):
  """Issue 7: one program per step, and one all-reduce carries the whole gradient sync.

  Besides it each synced BatchNorm layer adds one all-reduce in the forward pass (its batch
  mean and mean of squares, concatenated by Flax) and one in the backward pass (the transpose of
  that mean); sequential layers depend on each other, so XLA cannot merge them: 2K + 1 in all
  for K layers (HCNN: K = 14, the front-end's BatchNorm over the harmonics, 12 in the seven
  blocks and one in the head, so 29). The one sync buffer holds every gradient, the loss and the
  BatchNorm running statistics.
  """
  co = worker[model]
  assert co['num_devices'] == 8 and co['programs'] == 1
  k = co['bn_layers']
  assert k >= 2
  assert co['sync'] == 1 and co['sync_sizes'] == [co['expected_sync_size']], co
  assert co['forward_bn'] == k and co['backward_bn'] == k, co
  assert co['forward_bn_size'] == co['num_stats'], co
  assert co['total'] == 2 * k + 1, co
  assert co['all_gather_or_reduce_scatter'] == 0
  if model == 'hcnn_collectives':
    assert k == 14 and co['total'] == 29


def test_make_mesh_spans_all_devices_on_one_data_axis():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == ('data',)
  assert mesh.devices.size == jax.device_count()
  assert parallel.make_mesh(jax.devices()[:1]).devices.size == 1


def test_shard_batch_rejects_strings():
  mesh = parallel.make_mesh(jax.devices()[:1])
  with pytest.raises(ValueError, match="'id'"):
    parallel.shard_batch({'audio': np.zeros((2, 4), np.float32), 'id': np.array(['a', 'b'])},
                         mesh)


def test_make_train_step_syncs_batchnorm_or_rejects_a_foreign_axis():
  # The registry's models are Classifiers whose front-end and back-end each hold the axis.
  hcnn = parallel._with_data_axis(_models.make_hcnn(3))
  assert hcnn.frontend.bn_axis_name == 'data' and hcnn.backend.bn_axis_name == 'data'
  assert hcnn.bn_axis_name == 'data'
  model = _models.make_model(3)
  foreign = model.clone(frontend=model.frontend.clone(bn_axis_name='batch'))
  mesh = parallel.make_mesh(jax.devices()[:1])
  with pytest.raises(ValueError, match="bn_axis_name='batch'"):
    parallel.make_train_step(foreign, _models.bce, optax.sgd(0.1), mesh)


_LAUNCHER_VARS = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID', 'SLURM_JOB_ID',
                  'SLURM_PROCID', 'SLURM_NTASKS', 'OMPI_MCA_orte_hnp_uri', 'OMPI_COMM_WORLD_SIZE',
                  'TPU_WORKER_HOSTNAMES', 'TPU_PROCESS_ADDRESSES')


@pytest.mark.parametrize('env, expected', [
    ({}, None),
    ({'SLURM_JOB_ID': '7', 'SLURM_PROCID': '0', 'SLURM_NTASKS': '1'}, None),
    ({'SLURM_JOB_ID': '7', 'SLURM_PROCID': '1', 'SLURM_NTASKS': '4'}, 'slurm'),
    ({'OMPI_MCA_orte_hnp_uri': '1.0;tcp://10.0.0.1:4000', 'OMPI_COMM_WORLD_SIZE': '1'}, None),
    ({'OMPI_MCA_orte_hnp_uri': '1.0;tcp://10.0.0.1:4000', 'OMPI_COMM_WORLD_SIZE': '2'}, 'ompi'),
    ({'TPU_WORKER_HOSTNAMES': 'localhost'}, None),
    ({'TPU_WORKER_HOSTNAMES': 'h0,h1'}, 'tpu'),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234', 'JAX_NUM_PROCESSES': '2',
      'JAX_PROCESS_ID': '0'}, 'coordinator'),
])
def test_multihost_environment_detection(monkeypatch, env, expected):
  for name in _LAUNCHER_VARS:
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  assert multihost.multihost_environment() == expected


def test_maybe_initialize_distributed_is_a_no_op_on_one_host(monkeypatch):
  for name in _LAUNCHER_VARS:
    monkeypatch.delenv(name, raising=False)
  assert parallel.maybe_initialize_distributed() is False
  assert jax.process_count() == 1


def test_bad_launcher_variable_is_named(monkeypatch):
  for name in _LAUNCHER_VARS:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('SLURM_JOB_ID', '7')
  monkeypatch.setenv('SLURM_PROCID', '0')
  monkeypatch.setenv('SLURM_NTASKS', 'four')
  with pytest.raises(ValueError, match='SLURM_NTASKS'):
    multihost.multihost_environment()
