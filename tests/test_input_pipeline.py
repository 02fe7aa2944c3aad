"""Data loading, augmentation and normalisation."""

import http.server
import socket
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_resnet import input_pipeline
from jax_resnet.augment import basic
from jax_resnet.augment import pipeline
import synthetic_cifar


def known_image():
  """A 32x32x3 image whose pixel values encode their row, column, channel."""
  rows, cols, chans = np.meshgrid(np.arange(32), np.arange(32), np.arange(3),
                                  indexing='ij')
  return (rows * 7 + cols * 3 + chans + 1).astype(np.uint8)  # never 0


def test_crop_is_a_window_of_the_zero_padded_image():
  image = known_image()
  batch = jnp.asarray(np.stack([image] * 64))
  out = np.asarray(basic.random_crop_and_flip(
      jax.random.PRNGKey(0), batch, padding=4, flip=False))
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  offsets = set()
  for crop in out:
    matches = [(dy, dx) for dy in range(9) for dx in range(9)
               if np.array_equal(crop, padded[dy:dy + 32, dx:dx + 32])]
    assert len(matches) == 1
    offsets.add(matches[0])
  # 64 draws over 81 offsets: many distinct, including shifted ones.
  assert len(offsets) > 20
  assert any(dy != 4 or dx != 4 for dy, dx in offsets)


def test_flip_mirrors_columns_about_half_the_time():
  image = known_image()
  batch = jnp.asarray(np.stack([image] * 200))
  out = np.asarray(basic.random_crop_and_flip(
      jax.random.PRNGKey(1), batch, padding=0, flip=True))
  flipped = np.array([np.array_equal(o, image[:, ::-1]) for o in out])
  unchanged = np.array([np.array_equal(o, image) for o in out])
  assert np.all(flipped ^ unchanged)
  assert 70 < flipped.sum() < 130


def test_no_augmentation_is_identity():
  batch = jnp.asarray(np.stack([known_image()] * 4))
  out = basic.random_crop_and_flip(jax.random.PRNGKey(0), batch,
                                            padding=0, flip=False)
  np.testing.assert_array_equal(out, batch)


def test_augmentation_is_per_example_and_rng_dependent():
  batch = jnp.asarray(np.stack([known_image()] * 16))
  a = basic.random_crop_and_flip(jax.random.PRNGKey(0), batch)
  b = basic.random_crop_and_flip(jax.random.PRNGKey(0), batch)
  c = basic.random_crop_and_flip(jax.random.PRNGKey(1), batch)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert len({np.asarray(x).tobytes() for x in a}) > 1


def test_normalization_presets():
  mean, std = input_pipeline.normalization_stats('dataset', 'cifar10')
  np.testing.assert_allclose(mean / 255, [0.4914, 0.4822, 0.4465])
  mean, std = input_pipeline.normalization_stats('imagenet', 'cifar100')
  np.testing.assert_allclose(std / 255, [0.229, 0.224, 0.225])
  image = jnp.full((1, 2, 2, 3), 255, jnp.uint8)
  out = input_pipeline.normalize(image, mean, std)
  np.testing.assert_allclose(out[0, 0, 0], (255 - mean) / std, rtol=1e-6)
  with pytest.raises(ValueError, match='dataset, cifar10, cifar100, imagenet'):
    input_pipeline.normalization_stats('zca', 'cifar10')


@pytest.mark.parametrize('dataset,classes', [('cifar10', 10),
                                             ('cifar100', 100)])
def test_load_split_on_mock_data(dataset, classes, tmp_path):
  """TFDS's own mock data read through TensorFlow, as the real files are;
  the synthetic data the other tests use (tests/synthetic_cifar.py) has the
  same form."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=40):
    split = input_pipeline.load_split(dataset, 'train',
                                      data_dir=str(tmp_path), download=False)
    first = input_pipeline.load_split(dataset, 'train',
                                      data_dir=str(tmp_path), download=False,
                                      max_examples=24)
  assert split.images.shape == (40, 32, 32, 3)
  assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
  assert split.labels.max() < classes
  with synthetic_cifar.synthetic_cifar(40):
    synthetic = input_pipeline.load_split(dataset, 'train')
    synthetic_first = input_pipeline.load_split(dataset, 'train',
                                                max_examples=24)
  for ours, theirs in ((synthetic, split), (synthetic_first, first)):
    assert ours.images.shape == theirs.images.shape
    assert ours.images.dtype == theirs.images.dtype
    assert ours.labels.shape == theirs.labels.shape
    assert ours.labels.dtype == theirs.labels.dtype
  assert synthetic.labels.max() < classes
  assert len(np.unique(synthetic.labels)) > 1
  np.testing.assert_array_equal(synthetic_first.images, synthetic.images[:24])
  assert first.num_examples == 24
  np.testing.assert_array_equal(first.images, split.images[:24])


def test_missing_dataset_names_dataset_and_directory(tmp_path):
  with pytest.raises(input_pipeline.DatasetNotFoundError) as info:
    input_pipeline.load_split('cifar100', 'test', data_dir=str(tmp_path),
                              download=False)
  message = str(info.value)
  assert 'cifar100' in message and str(tmp_path) in message
  assert 'download_and_prepare' in message


def test_unknown_dataset():
  with pytest.raises(ValueError, match='valid datasets: cifar10, cifar100'):
    input_pipeline.num_classes('mnist')


@pytest.mark.parametrize('size', [16, 8, 5])
def test_cutout_zeroes_one_square_that_may_hang_over_the_border(size):
  # Positive everywhere, so zeroed pixels are cutout's.
  images = jnp.asarray(np.stack([known_image()] * 400), jnp.float32) + 1.0
  out = np.asarray(basic.cutout(jax.random.PRNGKey(3), images, size))
  zeroed = out == 0
  assert np.all(zeroed.all(-1) == zeroed.any(-1))  # Whole pixels.
  zeroed = zeroed[..., 0]
  full = 2 * (size // 2)
  clipped = 0
  for mask in zeroed:
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    assert rows.size and cols.size  # Some of the square is always inside.
    # One solid rectangle: the square, cut by the border.
    assert mask.sum() == rows.size * cols.size
    assert mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    assert rows.size <= full and cols.size <= full
    clipped += rows.size < full or cols.size < full
    # Rows it covers run to the border whenever it is cut.
    if rows.size < full:
      assert rows[0] == 0 or rows[-1] == 31
  # Centres are uniform over the image: a square is cut on an axis when its
  # centre lies within half of the square of one border.
  half = size // 2
  cut_axis = (2 * half - 1) / 32
  expected = 1 - (1 - cut_axis) ** 2
  assert abs(clipped / len(zeroed) - expected) < 0.08
  np.testing.assert_array_equal(out[~zeroed], np.asarray(images)[~zeroed])


def test_cutout_in_the_train_step_leaves_crop_and_flip_as_they_were():
  """Cutout draws from a stream of its own: with it on, the pixels it does
  not zero are those of the run without it."""
  images = jnp.asarray(np.stack([known_image()] * 8))
  labels = jnp.zeros((8,), jnp.int32)
  mean, std = input_pipeline.normalization_stats('dataset', 'cifar10')
  seen = {}
  for cutout in (0, 8):
    out, mixed = pipeline.train_batch(
        jax.random.PRNGKey(0), images, labels,
        pipeline.AugmentConfig(cutout=cutout), mean, std, jnp.float32)
    assert mixed is None
    seen[cutout] = np.asarray(out)
  kept = seen[8] != 0
  np.testing.assert_array_equal(seen[8][kept], seen[0][kept])
  assert (~kept).any()


# Each part on and off at least once, both policies, all together once.
@pytest.mark.parametrize('policy,cutout,mix', [
    ('autoaugment', 8, (0.0, 0.0)), ('randaugment', 0, (0.2, 1.0)),
    ('autoaugment', 8, (0.2, 1.0)), ('none', 0, (0.0, 1.0))])
def test_combinations_in_order(policy, cutout, mix):
  """crop/flip, policy, cutout, mix: each from a stream of its own, so the
  policy's output is the policy applied to the crop-and-flip output, and
  with Cutout on only the square differs."""
  images = jnp.asarray(np.stack([known_image()] * 4))
  labels = jnp.arange(4, dtype=jnp.int32)
  mean, std = input_pipeline.normalization_stats('dataset', 'cifar10')
  rng = jax.random.PRNGKey(5)
  cfg = pipeline.AugmentConfig(policy=policy, cutout=cutout,
                               mixup_alpha=mix[0], cutmix_alpha=mix[1])
  out, mixed = jax.jit(pipeline.train_batch, static_argnums=(3, 6))(
      rng, images, labels, cfg, mean, std, jnp.float32)
  assert out.shape == (4, 32, 32, 3) and (mixed is not None) == (max(mix) > 0)
  cropped = basic.random_crop_and_flip(rng, images)
  from jax_resnet.augment import policies  # pylint: disable=g-import-not-at-top
  if policy != 'none':
    cropped = policies.apply_policy(
        jax.random.fold_in(rng, pipeline.POLICY_STREAM), cropped, policy)
  expected = input_pipeline.normalize(cropped, mean, std)
  if cutout:
    expected = basic.cutout(jax.random.fold_in(rng, pipeline.CUTOUT_STREAM),
                            expected, cutout)
  if mixed is not None:
    from jax_resnet.augment import mix as mixing  # pylint: disable=g-import-not-at-top
    expected, expected_labels = mixing.mix(
        jax.random.fold_in(rng, pipeline.MIX_STREAM), expected, labels,
        mix[0], mix[1], cfg.mix_switch_prob)
    assert float(mixed.lam) == pytest.approx(float(expected_labels.lam))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_augmentation_figure(tmp_path):
  from jax_resnet.tools import augmentations  # pylint: disable=g-import-not-at-top
  images = np.stack([known_image()] * 3)
  rows = augmentations.augmented_rows(images, np.arange(3), 'cifar10')
  assert [label.split(' (')[0] for label, _ in rows] == [
      label for label, _ in augmentations.ROWS]
  # The first row is the originals, unchanged by the round trip through
  # normalisation.
  np.testing.assert_array_equal(rows[0][1], images)
  assert all(r.shape == images.shape and r.dtype == np.uint8
             for _, r in rows)
  path = str(tmp_path / 'grid.png')
  augmentations.write_figure(path, rows)
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_a_dataset_that_cannot_be_downloaded_fails_fast(tmp_path,
                                                        monkeypatch):
  # Offline: the download host does not answer (here a closed local port).
  for name in ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY'):
    monkeypatch.delenv(name, raising=False)
  url = f'https://127.0.0.1:{_closed_port()}/cifar-100-binary.tar.gz'
  monkeypatch.setitem(input_pipeline.DOWNLOAD_URLS, 'cifar100', url)
  start = time.time()
  with pytest.raises(input_pipeline.DatasetNotFoundError) as info:
    input_pipeline.load_split('cifar100', 'train', data_dir=str(tmp_path))
  assert time.time() - start < 5
  message = str(info.value)
  assert message.startswith(f"Dataset 'cifar100' is not prepared in "
                            f'{tmp_path} and cannot be downloaded: '
                            '127.0.0.1:')
  assert 'cannot be reached (ConnectionRefusedError' in message, message
  assert 'download_and_prepare' in message


class _Head(http.server.BaseHTTPRequestHandler):

  def do_HEAD(self):  # pylint: disable=invalid-name
    self.send_response(200)
    self.end_headers()

  def log_message(self, *args):
    del args


def test_unreachable():
  server = http.server.HTTPServer(('127.0.0.1', 0), _Head)
  threading.Thread(target=server.handle_request, daemon=True).start()
  url = f'http://127.0.0.1:{server.server_port}/x'
  assert input_pipeline.unreachable(url, 5) is None
  server.server_close()
  # A server that never answers: the wait ends at the timeout.
  with socket.socket() as silent:
    silent.bind(('127.0.0.1', 0))
    silent.listen()
    port = silent.getsockname()[1]
    start = time.time()
    why = input_pipeline.unreachable(f'http://127.0.0.1:{port}/x', 0.5)
  assert time.time() - start < 1.5
  assert why == f'127.0.0.1:{port} did not answer within 0.5 s'


def test_is_prepared(tmp_path, monkeypatch):
  (tmp_path / 'cifar10' / '3.0.2').mkdir(parents=True)
  assert not input_pipeline.is_prepared('cifar10', str(tmp_path))
  (tmp_path / 'cifar10' / '3.0.2' / 'dataset_info.json').write_text('{}')
  assert input_pipeline.is_prepared('cifar10', str(tmp_path))
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  assert input_pipeline.is_prepared('cifar10', None)
  assert not input_pipeline.is_prepared('cifar100', None)
