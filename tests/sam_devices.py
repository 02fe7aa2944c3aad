"""Checks SAM's per-device perturbation on the host's devices (run by
tests/test_sam.py with two forced CPU devices): the sharded train step's
update is the one made from the mean of each device's own SAM gradient."""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, __file__.rsplit('/tests/', 1)[0])
sys.path.insert(0, __file__.rsplit('/', 1)[0])
from conftest import step_images, tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax_resnet import sam  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax_resnet import train  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  devices = jax.device_count()
  assert devices == 2, devices
  config = tiny_config(**{'optimizer.sam_rho': 0.05,
                          'model.conv_backend': 'xla'})
  model = train.validated_model(config)
  cfg = train.step_config(config)
  state = train.create_train_state(config, model.module, 10)
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (16, 32, 32, 3), np.uint8),
           'label': rng.integers(0, 10, (16,), np.int32)}
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), (train.DATA_AXIS,))
  sharded = jax.device_put(batch, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(train.DATA_AXIS)))
  step = jax.jit(functools.partial(train.train_step, cfg=cfg, mesh=mesh))
  new_state, metrics = step(state, sharded)

  # The same by hand: the step's augmentation, then SAM on each half (one
  # jitted program: op by op it took most of this check's time).
  @jax.jit
  def by_hand(state, batch):
    images, _, depth_rng = step_images(state, batch, cfg)
    targets = jax.nn.one_hot(batch['label'], 10)
    grads, stats, losses = [], [], []
    for half in (slice(0, 8), slice(8, 16)):

      def loss_fn(params, half=half):
        logits, new = state.apply_fn(
            {'params': params, 'batch_stats': state.batch_stats},
            images[half], train=True, mutable=['batch_stats'],
            rngs={'stochastic_depth': depth_rng})
        return optax.softmax_cross_entropy(logits, targets[half]).mean(), new
      (loss, new), g = sam.sam_gradient(loss_fn, state.params, 0.05)
      grads.append(g)
      stats.append(new['batch_stats'])
      losses.append(loss)
    mean = lambda xs: jax.tree.map(lambda *v: sum(v) / len(v), *xs)
    expected = state.apply_gradients(grads=mean(grads),
                                     batch_stats=mean(stats))
    return expected, jnp.stack(losses)

  expected, losses = by_hand(state, batch)
  np.testing.assert_allclose(float(metrics['train_loss']),
                             float(np.mean(losses)), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(expected.params),
                  jax.tree.leaves(new_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(expected.batch_stats),
                  jax.tree.leaves(new_state.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # And it differs from SAM over the whole batch (the per-device choice
  # matters).
  whole = jax.jit(functools.partial(train.train_step, cfg=cfg))(state, batch)
  difference = max(
      np.max(np.abs(np.asarray(a) - np.asarray(b))) for a, b in zip(
          jax.tree.leaves(whole[0].params), jax.tree.leaves(new_state.params)))
  assert difference > 1e-6, difference
  print('per-device SAM ok')


if __name__ == '__main__':
  main()
