"""CPU smoke runs of the benchmark entry points (bench/), at the tiniest settings.

The benchmarks are run by hand on accelerators, where a crash after an hour of set-up is costly;
these runs check that each entry point still goes end to end against the current training code
(train step, eval step, loader, in-memory source) and returns its documented results: positive,
finite clips/s in rows with the expected keys. The timings themselves mean nothing here.

The JAX runs share the persistent compilation cache of test_loop.py, and the calls are chosen to
compile the same train step (HCNN width 4, batch 2, float32, the benchmarks' Adam): bench.run
compiles it in its subprocess, breakdown and end_to_end then load it. Even so the module takes
about 70 s on a 2-core machine on its first run (bench.run alone ~35 s: its subprocess imports
JAX and compiles cold), about 20 s once the cache holds the steps.
"""
from __future__ import annotations

import json
import math
import os

import jax
import pytest


def _rate(value):
  return isinstance(value, float) and math.isfinite(value) and value > 0


# Slow: about 35 s on a 2-core CPU with a cold cache (a fresh subprocess imports JAX and compiles
# the HCNN step), 4 s with a warm one.
@pytest.mark.slow
def test_run_cpu_preset(cache_dir, tmp_path, monkeypatch):
  from bench import run
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', cache_dir)
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
  out = tmp_path / 'run.json'
  result = run.main(['--preset', 'cpu', '--steps', '1', '--warmup', '0', '--json', str(out)])
  (row,) = result['results']
  assert 'error' not in row, row['error']
  assert (row['model'], row['dtype'], row['batch']) == ('hcnn', 'float32', 2)
  assert row['model_kwargs'] == {'width': 4} and row['input_length'] == 80_000
  assert row['steps'] == 1 and row['finite'] is True and row['params'] > 0
  for key in ('train_clips_per_s', 'infer_clips_per_s', 'train_step_ms', 'infer_step_ms',
              'train_compile_s', 'infer_compile_s', 'peak_mem_mb'):
    assert _rate(row[key]), (key, row[key])
  assert row['mem_source'] in ('device', 'rss')
  assert result['meta']['preset'] == 'cpu' and result['meta']['backend'] == jax.default_backend()
  assert json.loads(out.read_text()) == json.loads(json.dumps(result))
  table = run.markdown(result['results'])
  assert table.splitlines()[2].startswith('| hcnn | float32 | 2 | ')


def test_run_rejects_an_unknown_model_before_running_anything():
  from bench import run
  with pytest.raises(SystemExit):
    run.main(['--models', 'no_such_model'])


@pytest.mark.slow
def test_breakdown_of_one_tiny_variant(cache_dir):
  from bench import breakdown
  result = breakdown.main(['--batch', '2', '--steps', '1', '--dtype', 'float32',
                           '--variants', '{"tiny": {"width": 4}}'])
  assert result['variants'] == {'tiny': {'width': 4}} and result['kernels'] == {}
  row = result['rows']['tiny']
  assert 'error' not in row, row['error']
  assert row['finite'] is True
  for key in ('train_clips_per_s', 'infer_clips_per_s', 'train_ms', 'infer_ms',
              'frontend_fwd_ms', 'frontend_fwd_bwd_ms'):
    assert _rate(row[key]), (key, row[key])
  # XLA's FLOP count may be missing on some backends (NaN); where it is there it is positive.
  for key in ('train_gflop_per_clip', 'train_mb_accessed_per_clip', 'infer_gflop_per_clip'):
    assert math.isnan(row[key]) or row[key] > 0, (key, row[key])


def test_breakdown_keeps_a_broken_variant_as_an_error_row(cache_dir):
  from bench import breakdown
  result = breakdown.main(['--batch', '2', '--steps', '1', '--dtype', 'float32',
                           '--variants', '{"bad": {"width": 4, "no_such_kwarg": 1}}'])
  assert set(result['rows']['bad']) == {'error'}


@pytest.mark.slow
def test_end_to_end_disk_and_memory_feeds(cache_dir, tmp_path, monkeypatch):
  from bench import end_to_end
  from hcnn_jax.data import in_memory
  shm = tmp_path / 'shm'  # the decoded split's file goes here instead of /dev/shm
  shm.mkdir()
  monkeypatch.setattr(in_memory, 'default_directory', lambda: str(shm))
  made = []
  real_init = in_memory.DecodedSource.__init__

  def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    made.append(self._path)
  monkeypatch.setattr(in_memory.DecodedSource, '__init__', init)
  result = end_to_end.main(['--model_kwargs', '{"width": 4}', '--batch', '2', '--tracks', '8',
                            '--steps', '2', '--warmup', '1',
                            '--feeds', 'disk:0:int16,memory:0:int16', '--dtype', 'float32',
                            '--data_dir', str(tmp_path / 'data')])
  assert result['tracks'] == 8 and result['batch'] == 2
  assert _rate(result['synthetic_clips_per_s'])
  rows = result['rows']
  assert [(r['source'], r['workers'], r['audio_dtype']) for r in rows] == [
      ('disk', 0, 'int16'), ('memory', 0, 'int16')]
  for r in rows:
    for key in ('loader_clips_per_s', 'train_clips_per_s', 'ratio'):
      assert _rate(r[key]), (key, r)
    assert r['startup_s'] >= 0
  assert os.path.isdir(tmp_path / 'data' / 'fake_tracks')  # the dataset went where asked
  assert len(made) == 1 and os.path.dirname(made[0]) == str(shm)  # decoded once, for 'memory'
  assert os.listdir(shm) == []  # and removed when the benchmark let go of it


@pytest.mark.slow
def test_end_to_end_reads_a_prepared_dataset(cache_dir, tmp_path, monkeypatch):
  """--dataset: the MTAT-sized rendered set on a GPU host; synth_gm/tiny (6-s clips) here."""
  del cache_dir  # compiled into the shared cache like the other runs
  from bench import end_to_end
  from hcnn_jax.data import in_memory
  from datasets.synth_gm.synth_gm import SynthGm
  data_dir = str(tmp_path / 'tfds')
  SynthGm(data_dir=data_dir, config='tiny', file_format='array_record',
          num_workers=1).download_and_prepare()
  decoded = tmp_path / 'decoded'  # --decoded_dir: the 'memory' feed's file goes here
  decoded.mkdir()
  seen = []
  real_init = in_memory.DecodedSource.__init__

  def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    seen.append(os.listdir(decoded))
  monkeypatch.setattr(in_memory.DecodedSource, '__init__', init)
  result = end_to_end.main(['--model_kwargs', '{"width": 4}', '--batch', '2', '--steps', '1',
                            '--warmup', '1', '--feeds', 'disk:0:int16,memory:0:int16',
                            '--dtype', 'float32', '--dataset', 'synth_gm/tiny',
                            '--data_dir', data_dir, '--decoded_dir', str(decoded)])
  assert (result['dataset'], result['tracks'], result['track_seconds']) == (
      'synth_gm/tiny', 24, 6.0)
  for row in result['rows']:
    assert _rate(row['train_clips_per_s']), row
  assert _rate(result['synthetic_clips_per_s'])
  assert len(seen) == 1 and len(seen[0]) == 1 and os.listdir(decoded) == []
  assert not os.path.exists(os.path.join(data_dir, 'fake_tracks'))  # nothing else was written
  with pytest.raises(SystemExit):
    end_to_end.main(['--dataset', 'synth_gm/tiny'])  # a prepared dataset needs its --data_dir

def test_end_to_end_rejects_a_bad_feed():
  from bench import end_to_end
  with pytest.raises(SystemExit):
    end_to_end.main(['--feeds', 'disk:0:float16'])


@pytest.mark.slow
def test_torch_twin_measures_on_the_cpu():
  torch = pytest.importorskip('torch')
  from bench import torch_hcnn
  row = torch_hcnn.measure(2, 'fp32', 1, 1, width=4)
  assert (row['batch'], row['mode']) == (2, 'fp32')
  assert _rate(row['train_clips_per_s']) and _rate(row['infer_clips_per_s'])
  assert row['device'] == (torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')


def test_every_default_variant_builds_and_the_pending_script_names_them():
  """The pending GPU script must not die on a renamed option after the device has started."""
  import re  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel

  from bench import breakdown  # pylint: disable=import-outside-toplevel
  from hcnn_jax import speed  # pylint: disable=import-outside-toplevel
  from hcnn_jax.models import get_model  # pylint: disable=import-outside-toplevel
  for model, variants in breakdown.DEFAULT_VARIANTS.items():
    for name, variant in variants.items():
      kwargs, choices, _ = breakdown.split_variant(variant)
      built = get_model(model, 3, **kwargs)
      for key, value in kwargs.items():
        assert getattr(built.backend, key) == value, (model, name, key)
      with speed.choose(**choices) as forced:  # a renamed choice raises here
        assert all(getattr(forced, k) == v for k, v in choices.items()), (model, name)
  script = os.path.join(os.path.dirname(breakdown.__file__), 'gpu_pending.sh')
  subprocess.run(['bash', '-n', script], check=True)
  text = open(script).read()
  models = set(re.findall(r'--model (\w+)', text))
  assert models and models <= set(breakdown.DEFAULT_VARIANTS), models
  from datasets.synth_gm.synth_gm import SynthGm  # pylint: disable=import-outside-toplevel
  configs = {c.name for c in SynthGm.BUILDER_CONFIGS}
  assert set(re.findall(r'--dataset synth_gm/(\w+)', text)) == {'large'} <= configs
  assert set(re.findall(r'synth_gm --config (\w+)', text)) == {'large'}


@pytest.mark.slow
def test_roofline_counts_every_flop_once_and_the_conv_outputs():
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from bench import roofline  # pylint: disable=import-outside-toplevel
  from hcnn_jax.models import get_model  # pylint: disable=import-outside-toplevel
  result = roofline.main(['--model_kwargs', '{"width": 4}', '--measured_train', '100'])
  rows = {r['block']: r for r in result['rows']}
  assert list(rows)[:3] == ['frontend (+ glue)', 'backend/layer1', 'backend/layer2']
  # The blocks' FLOPs add up to the whole model's, counted here independently.
  model = get_model('hcnn', 50, width=4, dtype=jnp.bfloat16)
  x = jnp.zeros((1, 80_000))
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  cost = jax.jit(lambda v: model.apply(v, x, train=False)).lower(variables).cost_analysis()
  assert result['total']['gflop_fwd'] == pytest.approx(cost['flops'] / 1e9, rel=1e-6)
  assert rows['frontend (+ glue)']['gflop_fwd'] > 0 and rows['frontend (+ glue)']['convs'] == 0
  # Layer 1: one conv over the 128 × 313 harmonic tensor, width 4 channels, bf16.
  assert rows['backend/layer1']['convs'] == 1
  assert rows['backend/layer1']['conv_out_mb'] == pytest.approx(128 * 313 * 4 * 2 / 1e6)
  assert rows['backend/layer2']['conv_out_mb'] == pytest.approx(2 * 64 * 156 * 4 * 2 / 1e6)
  for r in result['rows']:
    assert r['gflop_train'] >= r['gflop_fwd'] >= 0
  train = result['train']
  assert train['ceiling_serial'] < train['ceiling_overlapped'] == min(
      train['ceiling_compute_only'], train['ceiling_memory_only'])
  assert train['measured_fraction_of_floor'] == pytest.approx(100 / train['ceiling_overlapped'])
  with pytest.raises(SystemExit):
    roofline.main(['--peak_tflops', '0'])


def test_vs_torch_times_the_reference_sized_twins():
  from bench import vs_torch
  counts = {'hcnn': 3_631_551, 'short_chunk': 3_687_348, 'short_chunk_res': 12_104_244,
            'fcn': 447_732, 'musicnn': 784_300, 'crnn': 394_100, 'sample': 1_869_874,
            'sample_se': 6_951_858, 'attention': 10_521_652}  # docs/zoo.md
  assert set(vs_torch.TWINNED) == set(counts)
  for name, count in counts.items():
    assert sum(p.numel() for p in vs_torch.twin(name).parameters()) == count, name
  with pytest.raises(SystemExit):
    vs_torch.main(['--models', 'fcn4'])  # no sota class: refused before anything runs


def test_compile_times_has_a_tiny_setting_for_every_registered_model():
  from bench import compile_times
  from hcnn_jax.models import get_model, list_models
  assert set(compile_times.TINY) == set(list_models())
  for name, kwargs in compile_times.TINY.items():
    get_model(name, 3, **kwargs)  # options the builder accepts


def test_train_parity_gives_the_twin_our_learning_rate_schedule():
  """The torch side's LambdaLR factor is optax's warmup-cosine schedule (ours) at every update."""
  import optax
  from bench import train_parity
  peak, warmup, total = 2e-3, 93, 744
  ours = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, 0.0)
  for step in (0, 1, 50, 92, 93, 94, 400, 743, 744, 800):
    assert math.isclose(peak * train_parity._lr_factor(step, warmup, total), float(ours(step)),
                        rel_tol=1e-5, abs_tol=1e-9), step


@pytest.mark.slow
def test_train_parity_runs_both_sides_on_a_tiny_set(tmp_path):
  """Both sides end to end (synth_gm/tiny, width 4, 2 epochs of 1 step, 2 seeds): rows, the
  per-tag tables over seeds and the criterion."""
  pytest.importorskip('torch')
  from bench import train_parity
  out = train_parity.main(['--seeds', '0,1', '--width', '4', '--num_epochs', '2',
                           '--config_name', 'tiny', '--data_dir', str(tmp_path / 'tfds'),
                           '--workdir', str(tmp_path / 'runs'), '--eval_chunks', '2',
                           '--json', str(tmp_path / 'parity.json')])
  assert [(r['side'], r['seed']) for r in out['rows']] == [
      ('jax', 0), ('torch', 0), ('jax', 1), ('torch', 1)]
  for row in out['rows']:
    assert 0.0 <= row['roc_auc'] <= 1.0 and 0.0 <= row['instrument_roc_auc'] <= 1.0, row
    assert len(row['per_tag_roc_auc']) == 26 and row['best_epoch'] in (1, 2), row
  assert isinstance(out['summary']['meets_criterion'], bool)
  saved = json.load(open(tmp_path / 'parity.json', encoding='utf-8'))
  assert saved['summary']['jax_minus_torch_roc_auc'] == pytest.approx(
      out['summary']['jax']['roc_auc']['mean'] - out['summary']['torch']['roc_auc']['mean'])


@pytest.mark.slow
def test_fused_layer1_reports_parity_timings_and_a_sweep(tmp_path):
  # The device script's first step (gpu_pending.sh fused) end to end; on the CPU the kernel runs
  # in interpret mode, so only the parity figures mean something here.
  from bench import fused_layer1
  out = tmp_path / 'fused.json'
  result = fused_layer1.main(['--batch', '2', '--parity_batch', '2', '--frames', '37',
                              '--width', '16', '--steps', '1', '--repeats', '2',
                              '--dtypes', 'float32', '--json', str(out)])
  assert json.loads(out.read_text())['parity'] == result['parity']
  fused, xla = result['parity']['float32']['fused'], result['parity']['float32']['xla']
  assert set(fused) == {'pooled', 'sum', 'sum_sq', 'd_input', 'd_kernel', 'd_bias'}
  assert max(fused.values()) < 1e-5 and max(xla.values()) == 0.0  # xla is the exact one in fp32
  assert set(result['ms']['float32']) == {'reference', 'pool_first', 'fused'}
  assert all(len(v) == 2 and all(_rate(t) for t in v) for v in result['ms']['float32'].values())
  sweep = fused_layer1.main(['--sweep', '--batch', '2', '--frames', '37', '--width', '16',
                             '--steps', '1', '--repeats', '1', '--dtypes', 'bfloat16'])['sweep']
  assert [r['config'] for r in sweep[:2]] == ['xla conv forward', 'xla conv gradients (dx, dw)']
  assert len(sweep) == 2 + 4 * 3 and all('error' not in r for r in sweep)
  assert all(_rate(r['forward_ms']) and _rate(r['dc_ms']) for r in sweep[2:])
