"""Mixup and CutMix: the images, the mixed targets, the weighted accuracy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from conftest import step_images, tiny_config

from jax_resnet.augment import mix
from jax_resnet import train


def batch(n=8):
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(n, 32, 32, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, (n,)), jnp.int32)
  return images, labels


def test_mixup_is_the_convex_combination_with_the_neighbour():
  images, labels = batch()
  out, mixed = mix.mixup(jax.random.PRNGKey(1), images, labels, alpha=0.2)
  lam = float(mixed.lam)
  assert 0.0 < lam < 1.0
  x = np.asarray(images)
  np.testing.assert_allclose(np.asarray(out),
                             lam * x + (1 - lam) * np.roll(x, 1, axis=0),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(mixed.partner_labels, np.roll(labels, 1))
  targets = np.asarray(mixed.targets(10))
  expected = np.zeros((8, 10))
  for i, (a, b) in enumerate(zip(np.asarray(labels), np.roll(labels, 1))):
    expected[i, a] += lam
    expected[i, b] += 1 - lam
  np.testing.assert_allclose(targets, expected, rtol=1e-6)


def test_mixup_weights_follow_beta_alpha_alpha():
  images, labels = batch(2)
  lams = [float(mix.mixup(jax.random.PRNGKey(k), images, labels, 0.2)[1].lam)
          for k in range(300)]
  assert stats.kstest(lams, stats.beta(0.2, 0.2).cdf).pvalue > 0.01


@pytest.mark.parametrize('seed', range(6))
def test_cutmix_pastes_one_box_and_lam_is_the_area_left(seed):
  images, labels = batch()
  out, mixed = mix.cutmix(jax.random.PRNGKey(seed), images, labels, 1.0)
  x, out = np.asarray(images), np.asarray(out)
  partner = np.roll(x, 1, axis=0)
  from_partner = np.all(out == partner, axis=-1) & ~np.all(out == x, axis=-1)
  # The same box in every image of the batch.
  assert all(np.array_equal(from_partner[0], m) for m in from_partner)
  own = np.all(out == x, axis=-1)
  assert np.all(own | from_partner)
  rows, cols = np.nonzero(from_partner[0])
  if rows.size:
    box = np.zeros((32, 32), bool)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    np.testing.assert_array_equal(box, from_partner[0])
  lam = float(mixed.lam)
  assert lam == pytest.approx(1.0 - rows.size / 1024, abs=1e-6)


def test_cutmix_box_as_torchvision_draws_it():
  # lam = 0.75: half sides int(0.5 * 0.5 * 32) = 8, a 16x16 box where the
  # centre is 8 or more pixels from every border.
  lam = jnp.float32(0.75)
  sizes = set()
  for k in range(200):
    y1, y2, x1, x2 = (int(v) for v in
                      mix.cutmix_box(jax.random.PRNGKey(k), lam, 32, 32))
    assert 0 <= y1 < y2 <= 32 and 0 <= x1 < x2 <= 32
    assert y2 - y1 <= 16 and x2 - x1 <= 16
    sizes.add((y2 - y1, x2 - x1))
  assert (16, 16) in sizes and any(s != (16, 16) for s in sizes)


@pytest.mark.parametrize('switch_prob', [0.0, 0.3, 1.0])
def test_switch_prob_is_the_probability_of_cutmix(switch_prob):
  images, labels = batch(4)
  cutmixed = 0
  trials = 200
  for k in range(trials):
    rng = jax.random.PRNGKey(k)
    out, mixed = mix.mix(rng, images, labels, 0.2, 1.0, switch_prob)
    # mix draws Mixup from the second key of the split, CutMix the third.
    _, mixup_rng, cutmix_rng = jax.random.split(rng, 3)
    mixup_out, _ = mix.mixup(mixup_rng, images, labels, 0.2)
    cutmix_out, cutmix_labels = mix.cutmix(cutmix_rng, images, labels, 1.0)
    is_cutmix = bool(np.array_equal(out, cutmix_out) and
                     float(mixed.lam) == float(cutmix_labels.lam))
    assert is_cutmix or np.array_equal(out, mixup_out)
    cutmixed += is_cutmix
  if switch_prob in (0.0, 1.0):
    assert cutmixed == trials * switch_prob
  else:
    assert stats.binomtest(cutmixed, trials, switch_prob).pvalue > 0.01


def test_weighted_accuracy():
  labels = jnp.asarray([0, 1, 2, 3])
  mixed = mix.MixedLabels(labels, jnp.roll(labels, 1), jnp.float32(0.7))
  # Predictions: the own class, the partner's (0), neither, the own class.
  logits = jax.nn.one_hot(jnp.asarray([0, 0, 9, 3]), 10)
  # own: 2 of 4, partner: 1 of 4.
  assert float(mixed.accuracy(logits)) == pytest.approx(
      100 * (0.7 * 0.5 + 0.3 * 0.25))


def test_mixed_loss_in_the_train_step():
  """The step's loss is the smoothed cross-entropy against the mixed
  targets that the pipeline made from the same key."""
  config = tiny_config(**{'data.mixup_alpha': 0.2, 'data.cutmix_alpha': 1.0,
                          'optimizer.label_smoothing': 0.1})
  model = train.validated_model(config)
  state = train.create_train_state(config, model.module, 10)
  cfg = train.step_config(config)
  images, labels = batch(8)
  uint8 = jnp.asarray(np.clip(np.asarray(images) * 60 + 128, 0, 255),
                      jnp.uint8)
  augmented, mixed, depth_rng = step_images(
      state, {'image': uint8, 'label': labels}, cfg)
  logits, _ = state.apply_fn(
      {'params': state.params, 'batch_stats': state.batch_stats}, augmented,
      train=True, mutable=['batch_stats'],
      rngs={'stochastic_depth': depth_rng})
  targets = np.asarray(mixed.targets(10)) * 0.9 + 0.01
  log_p = np.asarray(jax.nn.log_softmax(logits))
  expected = float(np.mean(-np.sum(targets * log_p, -1)))
  _, metrics = jax.jit(train.train_step, static_argnames='cfg')(
      state, {'image': uint8, 'label': labels}, cfg=cfg)
  assert float(metrics['train_loss']) == pytest.approx(expected, rel=1e-5)
  assert float(metrics['train_accuracy']) == pytest.approx(
      float(mixed.accuracy(logits)), abs=1e-4)


def test_training_with_mixing_says_its_accuracy_is_lam_weighted(
    mock_cifar, tmp_path, capsys):
  del mock_cifar
  config = tiny_config(num_epochs=1, **{'data.mixup_alpha': 0.2,
                                        'data.cutmix_alpha': 1.0})
  final = train.train_and_evaluate(config, str(tmp_path))
  out = capsys.readouterr().out
  assert 'train accuracy is lam-weighted' in out
  assert 'lam-weighted acc' in out.splitlines()[-2]
  assert 0 <= final['train_accuracy'] <= 100
