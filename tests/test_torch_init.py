"""Initialisation: every parameter and statistic drawn from the same
distribution as the PyTorch reference's."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')

# pylint: disable=g-import-not-at-top,wrong-import-position
from jax_resnet.interop import torch_import
from jax_resnet.models import registry
from torch_cases import CASES, make_config, report


# One network per kind of initialiser (split attention has grouped and biased
# convolutions; the other cases build the same layers), at depth 8 where that
# is a CIFAR ResNet: compiling init is the slow part.
INIT_CASES = {'basic': 8, 'split_attention': 8, 'wide_resnet': None,
              'pyramidnet': None, 'densenet_bc': None, 'resnet18': None}


@pytest.mark.parametrize('network', list(INIT_CASES))
def test_initialisation_follows_the_reference_distributions(network):
  depth = INIT_CASES[network]
  config = make_config(network, **({'depth': depth} if depth else {}))
  model = registry.create_model(config.model, 10)
  torch.manual_seed(0)
  reference = CASES[network].reference(config.model, model)
  theirs = torch_import.torch_to_flax(reference.state_dict(), model)
  size = CASES[network].image_size
  ours = jax.jit(model.init)(jax.random.PRNGKey(0),
                             np.zeros((1, size, size, 3), np.float32))

  leaves = {}
  for collection in ('params', 'batch_stats'):
    pairs = zip(jax.tree_util.tree_flatten_with_path(ours[collection])[0],
                jax.tree_util.tree_flatten_with_path(theirs[collection])[0])
    for (path, a), (other, b) in pairs:
      assert path == other
      leaves[(collection,) + tuple(p.key for p in path)] = (np.asarray(a),
                                                            np.asarray(b))
  ours_z, theirs_z, worst, problems = [], [], 0.0, []
  for path, (a, b) in leaves.items():
    name = '/'.join(map(str, path))
    kernel = leaves.get(path[:-1] + ('kernel',))
    if path[-1] == 'kernel':
      # Per layer (scanned layers pooled); sampling error of a std estimate
      # is about std / sqrt(2 n), for each of the two.
      ratio = np.std(a) / np.std(b)
      worst = max(worst, abs(ratio - 1))
      if abs(np.log(ratio)) > 6.0 / np.sqrt(a.size):
        problems.append(f'{name}: std {np.std(a):.4f}, reference '
                        f'{np.std(b):.4f}')
      if abs(np.mean(a)) > 6 * np.std(b) / np.sqrt(a.size):
        problems.append(f'{name}: mean {np.mean(a):.4f}')
      if a.ndim >= 4:
        ours_z.append((a / np.std(a)).ravel())
        theirs_z.append((b / np.std(b)).ravel())
    elif path[-1] == 'bias' and kernel is not None:
      # PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), or zeros.
      fan_in = np.prod(kernel[0].shape[:-1]) if kernel[0].ndim == 2 else (
          np.prod(kernel[0].shape[-4:-1]))
      bound = 1 / np.sqrt(fan_in)
      kinds = ['zeros' if np.all(x == 0) else 'random' for x in (a, b)]
      if kinds[0] != kinds[1]:
        problems.append(f'{name}: {kinds[0]}, reference {kinds[1]}')
      if np.any(np.abs(a) > bound) or np.any(np.abs(b) > bound):
        problems.append(f'{name}: beyond 1/sqrt(fan_in)')
    elif not np.array_equal(a, b):  # BatchNorm, statistics, gates: constants.
      problems.append(f'{name}: {a.ravel()[:3]}..., reference {b.ravel()[:3]}')
  report(f'{network} init: worst per-layer kernel std ratio - 1', worst)
  # Pooled convolutions: the same shape of distribution (a normal has 4.6% of
  # its mass beyond 2 std and kurtosis 3, a truncated normal less of both, a
  # uniform none and 1.8).
  pooled = [np.concatenate(z) for z in (ours_z, theirs_z)]
  tails = [np.mean(np.abs(z) > 2) for z in pooled]
  assert abs(tails[0] - tails[1]) < 0.006, tails
  kurtosis = [np.mean(z ** 4) for z in pooled]
  assert abs(kurtosis[0] - kurtosis[1]) < 0.3, kurtosis
  assert not problems, 'Initialisation differs: ' + '; '.join(problems)
