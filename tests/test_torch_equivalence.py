"""Flax networks against their PyTorch references: eval logits of every
block and network, train-mode logits and BatchNorm running statistics."""

import functools

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')

# pylint: disable=g-import-not-at-top,wrong-import-position
from jax_resnet.interop import torch_import
from torch_cases import (CASES, STOCHASTIC, leaves_named, make_pair,
                         max_abs_diff, max_rel_diff, random_images, report,
                         to_torch)


@pytest.mark.parametrize('network', sorted(CASES))
def test_eval_logits_match(network):
  _, model, reference, variables = make_pair(network)
  images = random_images(size=CASES[network].image_size)
  logits = jax.jit(model.apply)(variables, images)
  with torch.no_grad():
    expected = reference.eval()(to_torch(images)).numpy()
  diff = max_abs_diff(logits, expected)
  report(f'{network} eval logits, max abs diff', diff)
  # float32 through up to ~30 layers, by another convolution algorithm
  # (XLA's without AVX-512 reached 1.07e-4 for Res2Net).
  assert diff < 2e-4
  assert np.std(expected) > 0.1  # The comparison is not between constants.


def test_eval_logits_match_unrolled():
  _, model, reference, variables = make_pair('basic', scan_blocks=False)
  assert 'stage1_block2' in variables['params']
  images = random_images()
  with torch.no_grad():
    expected = reference.eval()(to_torch(images)).numpy()
  diff = max_abs_diff(jax.jit(model.apply)(variables, images), expected)
  report('basic (unrolled) eval logits, max abs diff', diff)
  assert diff < 1e-4


def bessel_corrected(before, after, counts, momentum=0.1):
  """PyTorch's running_var update redone with the biased batch variance."""
  corrected = dict(after)
  for name, n in counts.items():
    old = before[f'{name}.running_var'].double()
    new = after[f'{name}.running_var'].double()
    unbiased = (new - (1 - momentum) * old) / momentum
    corrected[f'{name}.running_var'] = (
        (1 - momentum) * old + momentum * unbiased * (n - 1) / n).float()
  return corrected


# Flax's BatchNorm computes the batch variance as E[x^2] - E[x]^2
# (use_fast_variance=True), which cancels badly where |mean| >> std, as in the
# split-attention BN over 8 pooled values per channel: 4e-4 off PyTorch
# (PyTorch itself is 1e-5 off float64); with use_fast_variance=False, 9e-6.
# Strict: passing means the norm partial changed; drop the mark then.
@pytest.mark.parametrize('network', sorted(set(CASES) - set(STOCHASTIC)))
def test_train_forward_and_batchnorm_statistics(network):
  _, model, reference, variables = make_pair(network)
  images = random_images(1, size=CASES[network].image_size)
  logits, updated = jax.jit(functools.partial(
      model.apply, train=True, mutable=['batch_stats']))(variables, images)

  counts = {}  # Elements per channel that each BatchNorm reduces over.
  hooks = [m.register_forward_hook(
      lambda mod, inputs, _, name=name: counts.__setitem__(
          name, inputs[0].numel() // inputs[0].shape[1]))
           for name, m in reference.named_modules()
           if isinstance(m, torch.nn.BatchNorm2d)]
  before = {k: v.clone() for k, v in reference.state_dict().items()}
  with torch.no_grad():
    expected = reference.train()(to_torch(images)).numpy()
  for hook in hooks:
    hook.remove()
  after = reference.state_dict()

  diff = max_abs_diff(logits, expected)
  report(f'{network} train logits, max abs diff', diff)
  assert diff < 1e-4

  torch_stats = torch_import.torch_to_flax(after, model)['batch_stats']
  ours = updated['batch_stats']
  mean_diff = max_abs_diff(dict(leaves_named(ours, 'mean')),
                           dict(leaves_named(torch_stats, 'mean')))
  report(f'{network} BN running_mean after one step, max abs diff', mean_diff)
  assert mean_diff < 1e-5

  # PyTorch updates running_var with the unbiased batch variance, Flax with
  # the biased one (the one both normalise with): they differ by exactly
  # momentum * var_batch / (n - 1).
  ours_var = dict(leaves_named(ours, 'var'))
  raw = max_rel_diff(ours_var, dict(leaves_named(torch_stats, 'var')))
  corrected_stats = torch_import.torch_to_flax(
      bessel_corrected(before, after, counts), model)['batch_stats']
  corrected = max_rel_diff(ours_var,
                           dict(leaves_named(corrected_stats, 'var')))
  report(f'{network} BN running_var vs PyTorch, max rel diff', raw)
  report(f'{network} BN running_var vs PyTorch with the biased batch '
         'variance, max rel diff', corrected)
  assert corrected < 1e-5
  assert raw > 10 * corrected  # The whole difference is Bessel's correction.
