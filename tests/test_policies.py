"""AutoAugment (CIFAR-10 policy) and RandAugment: the policy table, the
magnitude spaces against torchvision's formulas, the per-image draws, and
whole batches against PIL applying the drawn operations."""

import functools

import jax
import numpy as np
from PIL import Image
import pytest
import torch

import pil_reference
from jax_resnet.augment import policies

NUM_IMAGES = 64
BATCH = 8

# torchvision's AutoAugmentPolicy.CIFAR10: (operation, probability,
# magnitude bin) twice per sub-policy, '-' for no magnitude.
TORCHVISION_CIFAR10 = """
Invert 0.1 -       Contrast 0.2 6
Rotate 0.7 2       TranslateX 0.3 9
Sharpness 0.8 1    Sharpness 0.9 3
ShearY 0.5 8       TranslateY 0.7 9
AutoContrast 0.5 - Equalize 0.9 -
ShearY 0.2 7       Posterize 0.3 7
Color 0.4 3        Brightness 0.6 7
Sharpness 0.3 9    Brightness 0.7 9
Equalize 0.6 -     Equalize 0.5 -
Contrast 0.6 7     Sharpness 0.6 5
Color 0.7 7        TranslateX 0.5 8
Equalize 0.3 -     AutoContrast 0.4 -
TranslateY 0.4 3   Sharpness 0.2 6
Brightness 0.9 6   Color 0.2 8
Solarize 0.5 2     Invert 0.0 -
Equalize 0.2 -     AutoContrast 0.6 -
Equalize 0.2 -     Equalize 0.6 -
Color 0.9 9        Equalize 0.6 -
AutoContrast 0.8 - Solarize 0.2 8
Brightness 0.1 3   Color 0.7 0
Solarize 0.4 5     AutoContrast 0.9 -
TranslateY 0.9 9   TranslateY 0.7 9
AutoContrast 0.9 - Solarize 0.8 3
Equalize 0.8 -     Invert 0.1 -
TranslateY 0.7 9   AutoContrast 0.9 -
"""

apply_policy = jax.jit(
    policies.apply_policy,
    static_argnames=('policy', 'randaugment_n', 'randaugment_m'))


@pytest.fixture(scope='module')
def cifar():
  return pil_reference.cifar_test_images(NUM_IMAGES)


def _parse_table(text):
  rows = []
  for line in text.strip().splitlines():
    words = line.split()
    rows.append(tuple((name, float(prob), None if bin_ == '-' else int(bin_))
                      for name, prob, bin_ in (words[:3], words[3:])))
  return tuple(rows)


def test_cifar10_policy_is_torchvisions_table():
  expected = _parse_table(TORCHVISION_CIFAR10)
  assert len(policies.CIFAR10_POLICY) == 25
  assert policies.CIFAR10_POLICY == expected
  for sub_policy in policies.CIFAR10_POLICY:
    for name, _, magnitude_bin in sub_policy:
      assert name in policies.OP_NAMES
      has_magnitude = name not in ('AutoContrast', 'Equalize', 'Invert')
      assert (magnitude_bin is not None) == has_magnitude
  assert policies.RANDAUGMENT_OPS == (
      'Identity', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate',
      'Brightness', 'Color', 'Contrast', 'Sharpness', 'Posterize',
      'Solarize', 'AutoContrast', 'Equalize')


def torchvision_space(num_bins, height, width):
  """torchvision's ``_augmentation_space(num_bins, [width, height])``
  formulas, evaluated with torch."""
  enhance = torch.linspace(0.0, 0.9, num_bins)
  return {
      'ShearX': (torch.linspace(0.0, 0.3, num_bins), True),
      'ShearY': (torch.linspace(0.0, 0.3, num_bins), True),
      'TranslateX': (torch.linspace(0.0, 150.0 / 331.0 * width, num_bins),
                     True),
      'TranslateY': (torch.linspace(0.0, 150.0 / 331.0 * height, num_bins),
                     True),
      'Rotate': (torch.linspace(0.0, 30.0, num_bins), True),
      'Brightness': (enhance, True),
      'Color': (enhance, True),
      'Contrast': (enhance, True),
      'Sharpness': (enhance, True),
      'Posterize': (8 - (torch.arange(num_bins) /
                         ((num_bins - 1) / 4)).round().int(), False),
      'Solarize': (torch.linspace(255.0, 0.0, num_bins), False),
  }


@pytest.mark.parametrize('num_bins', [10, 31])
@pytest.mark.parametrize('size', [(32, 32), (24, 40), (224, 224)])
def test_magnitudes_are_torchvisions(num_bins, size):
  ours = policies.augmentation_space(num_bins, *size)
  assert set(ours) == set(policies.OP_NAMES)
  for name, (values, signed) in torchvision_space(num_bins, *size).items():
    values = values.numpy().astype(np.float32)
    assert ours[name][1] == signed, name
    # torch's vectorised linspace kernel can be an ulp off its scalar
    # formula (e.g. bin 20 of 31), depending on the SIMD width.
    np.testing.assert_allclose(ours[name][0], values, rtol=2e-7,
                               atol=1e-30, err_msg=name)
    # What the operations use of them agrees exactly.
    if name.startswith('Translate') or name == 'Posterize':
      np.testing.assert_array_equal(np.trunc(ours[name][0]),
                                    np.trunc(values), err_msg=name)
  for name in ('Identity', 'AutoContrast', 'Equalize', 'Invert'):
    np.testing.assert_array_equal(ours[name][0], 0)
    assert not ours[name][1]


def test_magnitudes_at_the_policy_bins():
  autoaugment = policies.augmentation_space(10, 32, 32)
  np.testing.assert_array_equal(autoaugment['Posterize'][0],
                                [8, 8, 7, 7, 6, 6, 5, 5, 4, 4])
  assert int(autoaugment['TranslateX'][0][9]) == 14  # 150 / 331 * 32
  np.testing.assert_allclose(autoaugment['Solarize'][0][2], 255 - 2 * 85 / 3,
                             rtol=1e-6)
  np.testing.assert_allclose(autoaugment['Rotate'][0][2], 20 / 3, rtol=1e-6)
  randaugment = policies.augmentation_space(31, 32, 32)
  expected = {'ShearX': 0.09, 'TranslateY': 4.3504531, 'Rotate': 9.0,
              'Brightness': 0.27, 'Sharpness': 0.27, 'Posterize': 7,
              'Solarize': 178.5}
  for name, value in expected.items():
    np.testing.assert_allclose(randaugment[name][0][9], value, rtol=1e-6,
                               err_msg=name)
  assert randaugment['Posterize'][0][30] == 4
  assert randaugment['Solarize'][0][30] == 0


def _five_sigma(frequency, probability, count):
  return abs(frequency - probability) <= (
      5 * np.sqrt(probability * (1 - probability) / count) + 1e-9)


def test_autoaugment_draws_follow_the_table():
  count = 20000
  ops, magnitudes = jax.jit(
      policies.autoaugment_ops, static_argnums=(1, 2, 3))(
          jax.random.key(0), count, 32, 32)
  ops, magnitudes = np.asarray(ops), np.asarray(magnitudes)
  assert ops.shape == magnitudes.shape == (count, 2)
  space = policies.augmentation_space(10, 32, 32)
  names = np.array(policies.OP_NAMES)
  # Each image's pair comes from one sub-policy, each operation kept or
  # replaced by Identity, at the table's magnitude up to its sign.
  candidates = []
  for sub_policy in policies.CIFAR10_POLICY:
    candidates.append([
        (name, 0.0 if bin_ is None else float(space[name][0][bin_]))
        for name, _, bin_ in sub_policy])
  for pair, values in zip(names[ops[:500]], magnitudes[:500]):
    assert any(all(op == 'Identity' and value == 0 or
                   op == name and abs(value) == magnitude
                   for op, value, (name, magnitude)
                   in zip(pair, values, candidate))
               for candidate in candidates), (pair, values)
  for slot in range(2):
    for op in set(policies.OP_NAMES) - {'Identity'}:
      probability = sum(sub_policy[slot][1] for sub_policy
                        in policies.CIFAR10_POLICY
                        if sub_policy[slot][0] == op) / 25
      drawn = names[ops[:, slot]] == op
      assert _five_sigma(drawn.mean(), probability, count), (slot, op)
      if not drawn.any():
        continue
      values = magnitudes[drawn, slot]
      if op in policies.SIGNED_OPS:
        nonzero = values[values != 0]  # ('Color', 0.7, 0) has magnitude 0.
        assert _five_sigma(np.mean(nonzero < 0), 0.5, nonzero.size), op
      else:
        assert np.all(values >= 0), op


def test_randaugment_draws_are_uniform_over_its_ops():
  count = 20000
  ops, magnitudes = jax.jit(
      policies.randaugment_ops, static_argnums=(1, 2, 3, 4, 5))(
          jax.random.key(1), count, 32, 32, 3, 9)
  ops, magnitudes = np.asarray(ops), np.asarray(magnitudes)
  assert ops.shape == magnitudes.shape == (count, 3)
  space = policies.augmentation_space(31, 32, 32)
  for index, name in enumerate(policies.RANDAUGMENT_OPS):
    drawn = ops == index
    assert _five_sigma(drawn.mean(), 1 / 14, ops.size), name
    np.testing.assert_array_equal(np.abs(magnitudes[drawn]),
                                  space[name][0][9], err_msg=name)
    negative = magnitudes[drawn] < 0
    if name in policies.SIGNED_OPS:
      assert _five_sigma(negative.mean(), 0.5, drawn.sum()), name
    else:
      assert not negative.any(), name
  assert not np.any(ops == policies.OP_NAMES.index('Invert'))


def _pil_sequence(image, ops, magnitudes):
  out = Image.fromarray(image)
  for op, magnitude in zip(ops, magnitudes):
    out = pil_reference.apply(out, policies.OP_NAMES[op], float(magnitude))
  return np.asarray(out)


@pytest.mark.parametrize('policy, n, m', [('autoaugment', 2, 9),
                                          ('randaugment', 2, 9),
                                          ('randaugment', 3, 30)])
def test_policy_batches_are_pil_applying_the_drawn_ops(cifar, policy, n, m):
  changed = 0
  for step in range(NUM_IMAGES // BATCH):
    key = jax.random.key(step)
    images = cifar[step * BATCH:(step + 1) * BATCH]
    out = np.asarray(apply_policy(key, images, policy, n, m))
    if policy == 'autoaugment':
      ops, magnitudes = policies.autoaugment_ops(key, BATCH, 32, 32)
    else:
      ops, magnitudes = policies.randaugment_ops(key, BATCH, 32, 32, n, m)
    for image, result, image_ops, image_magnitudes in zip(
        images, out, np.asarray(ops), np.asarray(magnitudes)):
      np.testing.assert_array_equal(
          result, _pil_sequence(image, image_ops, image_magnitudes),
          err_msg=f'{[policies.OP_NAMES[o] for o in image_ops]} '
                  f'{image_magnitudes}')
      changed += not np.array_equal(result, image)
  assert changed >= NUM_IMAGES // 4


def test_apply_policy_is_deterministic_per_key_and_independent_per_image(
    cifar):
  images = np.repeat(cifar[:1], BATCH, axis=0)
  for policy in ('autoaugment', 'randaugment'):
    first = np.asarray(apply_policy(jax.random.key(7), images, policy, 2, 9))
    again = np.asarray(apply_policy(jax.random.key(7), images, policy, 2, 9))
    other = np.asarray(apply_policy(jax.random.key(8), images, policy, 2, 9))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # Copies of one image come out differently: each draws its own ops.
    distinct = {result.tobytes() for result in first}
    assert len(distinct) >= 3, policy


def test_jitted_apply_policy_compiles_once_per_policy(cifar):
  images = cifar[:BATCH]
  for policy in policies.POLICIES:
    jitted = jax.jit(functools.partial(policies.apply_policy, policy=policy))
    for seed in range(3):
      out = jitted(jax.random.key(seed), images)
      assert out.shape == (BATCH, 32, 32, 3) and out.dtype == np.uint8
    assert jitted._cache_size() == 1  # pylint: disable=protected-access


def test_identity_cases(cifar):
  images = cifar[:BATCH]
  key = jax.random.key(0)
  np.testing.assert_array_equal(policies.apply_policy(key, images, 'none'),
                                images)
  np.testing.assert_array_equal(
      apply_policy(key, images, 'randaugment', randaugment_n=0), images)
  np.testing.assert_array_equal(policies.apply_op(images, 'Identity', 3.0),
                                images)


def test_apply_op_applies_one_named_op_to_a_batch(cifar):
  images = cifar[:BATCH]
  for name in ('Rotate', 'Solarize', 'Equalize'):
    np.testing.assert_array_equal(
        policies.apply_op(images, name, 20.0),
        pil_reference.apply_to_batch(images, name, 20.0))
  angles = np.linspace(-30, 30, BATCH).astype(np.float32)
  np.testing.assert_array_equal(
      policies.apply_op(images, 'Rotate', angles),
      pil_reference.apply_to_batch(images, 'Rotate', angles))


def test_invalid_arguments_raise(cifar):
  images = cifar[:BATCH]
  key = jax.random.key(0)
  with pytest.raises(ValueError, match='none, autoaugment, randaugment'):
    policies.apply_policy(key, images, 'trivialaugment')
  for n, m in ((-1, 9), (2, -1), (2, 31), (2, 9.5)):
    with pytest.raises(ValueError, match='RandAugment'):
      policies.apply_policy(key, images, 'randaugment', n, m)
  with pytest.raises(ValueError, match='operation'):
    policies.apply_op(images, 'Blur', 1.0)
  with pytest.raises(ValueError, match='uint8'):
    policies.apply_policy(key, images.astype(np.float32), 'autoaugment')
  with pytest.raises(ValueError, match='uint8'):
    policies.apply_op(images[0], 'Rotate', 1.0)
