"""The reference optimiser recipe as data (schedule.py) and its optax transformations (optim.py):
switch epochs, learning rates and reloads; Adam with coupled L2 and Nesterov SGD against torch's
update formulas written out in numpy; momentum kept across lr drops; the AdamW-cosine option."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from hcnn_jax.training import optim, schedule


def _config(num_epochs=200, steps_per_epoch=None, **optimizer):
  name = optimizer.pop('name', 'reference')
  variant = optimizer.pop('variant', 'sota')
  opt = schedule.optimizer_config(name, variant)
  opt.update(optimizer)
  return ml_collections.ConfigDict(dict(num_epochs=num_epochs, steps_per_epoch=steps_per_epoch,
                                        optimizer=opt))


@pytest.mark.parametrize('variant, switches, reload', [('sota', (80, 100, 120), True),
                                                       ('ddhf', (60, 80, 100), False)])
def test_reference_switches_after_the_right_epochs(variant, switches, reload):
  phases = schedule.phases(_config(variant=variant))
  assert [(p.start_epoch, p.optimizer_name, p.learning_rate, p.reload_best) for p in phases] == [
      (1, 'adam', 1e-4, False),
      (switches[0] + 1, 'sgd', 1e-3, reload),
      (switches[1] + 1, 'sgd', 1e-4, reload),
      (switches[2] + 1, 'sgd', 1e-5, reload)]
  assert [(after, p.learning_rate) for after, p in schedule.switch_events(phases)] == [
      (switches[0], 1e-3), (switches[1], 1e-4), (switches[2], 1e-5)]
  lr_of = lambda e: schedule.phase_at(e, phases).learning_rate
  name_of = lambda e: schedule.phase_at(e, phases).optimizer_name
  a, b, c = switches
  assert [name_of(e) for e in (1, a, a + 1)] == ['adam', 'adam', 'sgd']
  assert [lr_of(e) for e in (a, a + 1, b, b + 1, c, c + 1, 200)] == [
      1e-4, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5]
  assert all(p.weight_decay == 1e-4 and p.decay_mask == 'reference' for p in phases)
  with pytest.raises(ValueError, match='1-based'):
    schedule.phase_at(0, phases)


def test_short_runs_drop_the_phases_they_never_reach():
  assert [p.start_epoch for p in schedule.phases(_config(num_epochs=80))] == [1]
  assert [p.start_epoch for p in schedule.phases(_config(num_epochs=81))] == [1, 81]
  tiny = _config(num_epochs=5, adam_epochs=2, sgd_epochs=(1, 1))
  assert [(p.start_epoch, p.learning_rate) for p in schedule.phases(tiny)] == [
      (1, 1e-4), (3, 1e-3), (4, 1e-4), (5, 1e-5)]


def test_bad_optimizer_configs_raise_clear_errors():
  with pytest.raises(ValueError, match="Unknown config.optimizer.name 'lamb'"):
    schedule.phases(ml_collections.ConfigDict(dict(num_epochs=3, optimizer={'name': 'lamb'})))
  with pytest.raises(ValueError, match=r"Unknown config.optimizer keys \['adam_epoch'\]"):
    schedule.phases(ml_collections.ConfigDict(dict(num_epochs=3, optimizer={'adam_epoch': 3})))
  with pytest.raises(ValueError, match='decay_mask'):
    schedule.phases(_config(decay_mask='all'))
  with pytest.raises(ValueError, match='one more entry'):
    schedule.phases(_config(sgd_lrs=(1e-3, 1e-4)))
  with pytest.raises(ValueError, match='num_epochs'):
    schedule.phases(_config(num_epochs=0))
  with pytest.raises(ValueError, match='steps_per_epoch'):
    schedule.phases(_config(name='adamw_cosine'))
  with pytest.raises(ValueError, match='warmup'):
    schedule.phases(_config(num_epochs=3, steps_per_epoch=10, name='adamw_cosine'))
  with pytest.raises(ValueError, match='variant'):
    schedule.optimizer_config('reference', 'icassp')


def test_plain_dict_configs_and_defaults_work():
  phases = schedule.phases({'num_epochs': 200, 'optimizer': {'name': 'reference'}})
  assert [p.start_epoch for p in phases] == [1, 81, 101, 121]
  tx = optim.make_optimizer({'num_epochs': 200, 'optimizer': {}})
  state = tx.init({'w': jnp.zeros(2)})
  assert float(optim.learning_rate(state)) == pytest.approx(1e-4)


def _torch_adam(p, grads, lr=1e-4, wd=1e-4, b1=0.9, b2=0.999, eps=1e-8):
  """torch.optim.Adam(weight_decay=wd).step, written out (coupled L2 folded into the gradient)."""
  m = np.zeros_like(p)
  v = np.zeros_like(p)
  for t, g in enumerate(grads, start=1):
    g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
  return p


def test_adam_with_coupled_l2_matches_torch_formula():
  rng = np.random.default_rng(0)
  p0 = rng.normal(size=(3, 4))
  grads = [rng.normal(size=(3, 4)) * 1e-3 for _ in range(3)]
  phase = schedule.phases(_config())[0]
  tx = optim.make_optimizer(phase)
  params = {'w': jnp.asarray(p0, jnp.float32)}
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update({'w': jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params['w'], _torch_adam(p0, grads), rtol=1e-6, atol=1e-7)
  # Coupled L2 is not AdamW: with a zero gradient the decay alone passes through Adam's
  # normalisation, so every weight moves by ~lr towards 0 (AdamW would move it by lr * wd * w).
  params = {'w': jnp.asarray(p0, jnp.float32)}
  updates, _ = tx.update({'w': jnp.zeros((3, 4))}, tx.init(params), params)
  np.testing.assert_allclose(params['w'] + updates['w'], _torch_adam(p0, [np.zeros((3, 4))]),
                             rtol=1e-6, atol=1e-7)
  assert np.all(np.abs(updates['w']) > 0.5e-4)


def test_sgd_nesterov_momentum_survives_lr_drops():
  """Walk the sota schedule's switches as the loop would, with torch's SGD formula by hand."""
  phases = schedule.phases(_config())
  events = dict(schedule.switch_events(phases))
  rng = np.random.default_rng(1)
  p0 = rng.normal(size=5)
  params = {'w': jnp.asarray(p0, jnp.float32)}
  current = phases[0]
  entry = optim.enter_phase(current, None, params)
  assert entry.action == 'init' and not entry.reload_best
  tx, state = entry.tx, entry.opt_state
  p, buf, mu, wd = p0.copy(), np.zeros(5), 0.9, 1e-4
  actions = []
  for epoch in range(1, 124):
    g = rng.normal(size=5) * 0.1
    updates, state = tx.update({'w': jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
    if current.optimizer_name == 'sgd':  # torch.optim.SGD(nesterov=True).step by hand
      d = g + wd * p
      buf = mu * buf + d
      p = p - current.learning_rate * (d + mu * buf)
      np.testing.assert_allclose(params['w'], p, rtol=1e-5, atol=1e-7)
    if epoch in events:
      entry = optim.enter_phase(events[epoch], current, params, state)
      actions.append((epoch, entry.action, entry.reload_best))
      if entry.action == 'init':
        tx = entry.tx
        p = np.asarray(params['w'], np.float64)  # the hand model starts from the same weights
      state, current = entry.opt_state, events[epoch]
      assert float(optim.learning_rate(state)) == pytest.approx(current.learning_rate)
  assert actions == [(80, 'init', True), (100, 'set_lr', True), (120, 'set_lr', True)]
  assert np.abs(buf).max() > 0  # the buffers the check above relied on were not reset
  assert optim.enter_phase(current, current, params, state).action == 'none'


def test_one_sgd_step_after_an_lr_drop_by_hand():
  sgd = schedule.Phase(81, 'sgd', 1e-3, True)
  tx = optim.make_optimizer(sgd)
  params = {'w': jnp.array([1.0, -2.0])}
  state = tx.init(params)
  g1, g2 = np.array([0.5, 0.25]), np.array([-1.0, 2.0])
  updates, state = tx.update({'w': jnp.asarray(g1, jnp.float32)}, state, params)
  params = optax.apply_updates(params, updates)
  state = optim.enter_phase(schedule.Phase(101, 'sgd', 1e-4, True), sgd, params, state).opt_state
  p1 = np.array([1.0, -2.0]) - 1e-3 * ((g1 + 1e-4 * np.array([1.0, -2.0])) * 1.9)
  d2 = g2 + 1e-4 * p1
  buf2 = 0.9 * (g1 + 1e-4 * np.array([1.0, -2.0])) + d2
  expected = p1 - 1e-4 * (d2 + 0.9 * buf2)
  updates, _ = tx.update({'w': jnp.asarray(g2, jnp.float32)}, state, params)
  np.testing.assert_allclose(optax.apply_updates(params, updates)['w'], expected, rtol=1e-6)


def test_decay_masks():
  params = {'conv': {'kernel': jnp.ones((3, 3, 1, 2)), 'bias': jnp.ones(2)},
            'bn': {'scale': jnp.ones(2), 'bias': jnp.ones(2)}, 'q': jnp.ones(())}
  zeros = {'conv': {'kernel': jnp.zeros((3, 3, 1, 2)), 'bias': jnp.zeros(2)},
           'bn': {'scale': jnp.zeros(2), 'bias': jnp.zeros(2)}, 'q': jnp.zeros(())}

  def moved(mask):
    tx = optim.make_optimizer(schedule.Phase(81, 'sgd', 1e-3, False, decay_mask=mask))
    updates, _ = tx.update(zeros, tx.init(params), params)
    return {'/'.join(str(k.key) for k in path): bool(jnp.any(u != 0))
            for path, u in jax.tree_util.tree_leaves_with_path(updates)}

  assert all(moved('reference').values())  # torch decays everything, Q and BN included
  assert moved('no_bn_no_bias') == {'bn/bias': False, 'bn/scale': False, 'conv/bias': False,
                                    'conv/kernel': True, 'q': False}
  with pytest.raises(ValueError, match='decay_mask'):
    optim.decay_mask('bn_only')


def test_adamw_cosine_warms_up_then_decays_with_decoupled_decay():
  config = _config(num_epochs=4, steps_per_epoch=5, name='adamw_cosine', warmup_epochs=1,
                   learning_rate=1e-2, weight_decay=0.1, decay_mask='reference')
  (phase,) = schedule.phases(config)
  assert (phase.optimizer_name, phase.warmup_steps, phase.decay_steps) == ('adamw_cosine', 5, 20)
  tx = optim.make_optimizer(config)
  params = {'w': jnp.array([2.0])}
  state = tx.init(params)
  lrs = []
  for _ in range(20):
    updates, state = tx.update({'w': jnp.zeros(1)}, state, params)
    lrs.append(float(optim.learning_rate(state)))
    # Zero gradient: only the decoupled decay moves the weight, by lr * wd * w.
    np.testing.assert_allclose(updates['w'], -lrs[-1] * 0.1 * params['w'], rtol=1e-5)
  sched = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 5, 20, 0.0)
  np.testing.assert_allclose(lrs, [float(sched(i)) for i in range(20)], rtol=1e-5, atol=1e-9)
  assert lrs[0] == 0.0 and lrs[5] == pytest.approx(1e-2, rel=1e-6) and lrs[-1] < 2e-4
  # warmup_steps overrides warmup_epochs; steps_per_epoch may come from the loop.
  config.optimizer.warmup_steps = 2
  config.steps_per_epoch = None
  (phase,) = schedule.phases(config, steps_per_epoch=10)
  assert (phase.warmup_steps, phase.decay_steps) == (2, 40)
  with pytest.raises(ValueError, match='schedule'):
    optim.set_learning_rate(state, 1e-3)
