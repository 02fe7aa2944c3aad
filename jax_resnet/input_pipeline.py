"""CIFAR from TFDS into device memory; augmentation inside compiled code.

A split is read once into a uint8 array. Batches are gathered on the device
from a per-epoch permutation, and the augmentation (``jax_resnet.augment``)
and normalisation run inside the jitted train step, so the host does no work
per step.
"""

import dataclasses
import glob
import os
import threading
from typing import Optional
import urllib.error
import urllib.parse
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np

from jax_resnet import errors

DATASETS = {'cifar10': 10, 'cifar100': 100}

# Per-channel mean and std of the training images, on the 0-1 scale.
NORMALIZATIONS = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    'none': ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


# Where TFDS downloads each dataset from (its image_classification/cifar.py).
# When a dataset is not prepared, the host is tried once, for at most
# REACH_TIMEOUT_SECONDS, before TFDS's own ten retries (three and a half
# minutes without network).
DOWNLOAD_URLS = {
    'cifar10': 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz',
    'cifar100': 'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz',
}
REACH_TIMEOUT_SECONDS = 5.0


class DatasetNotFoundError(errors.Error, RuntimeError):
  """The dataset is not prepared in data_dir and could not be downloaded."""


def _not_found(dataset: str, searched: str, why: str) -> DatasetNotFoundError:
  return DatasetNotFoundError(
      f'Dataset {dataset!r} is not prepared in {searched} {why}.\n'
      'Prepare it offline on a machine with network access with\n'
      '  python -c "import tensorflow_datasets as tfds; '
      f"tfds.builder('{dataset}', data_dir='DIR').download_and_prepare()\"\n"
      f'then copy DIR/{dataset} here and pass --config.data_dir=DIR '
      '(or set TFDS_DATA_DIR).')


def is_prepared(dataset: str, data_dir: Optional[str]) -> bool:
  """Whether TFDS has prepared a version of ``dataset`` in ``data_dir``."""
  return bool(glob.glob(os.path.join(_resolved_data_dir(data_dir), dataset,
                                     '*', 'dataset_info.json')))


def unreachable(url: str, timeout: float) -> Optional[str]:
  """None if ``url``'s server answers an HTTP HEAD request (through the
  environment's proxy, if any) within ``timeout`` seconds, name lookup
  included; else why not. Any HTTP answer counts: the network is there."""
  outcome = []

  def ask():
    try:
      urllib.request.urlopen(urllib.request.Request(url, method='HEAD'),
                             timeout=timeout).close()
      outcome.append(None)
    except urllib.error.HTTPError:
      outcome.append(None)
    except (OSError, ValueError) as e:
      reason = getattr(e, 'reason', e)
      # The socket's own timeout may end the wait just before the join's.
      outcome.append(TimeoutError if isinstance(reason, TimeoutError) else
                     f'{type(reason).__name__}: {reason}')

  # In a thread: the name lookup has no timeout of its own.
  thread = threading.Thread(target=ask, daemon=True)
  thread.start()
  thread.join(timeout)
  host = urllib.parse.urlsplit(url).netloc
  if not outcome or outcome[0] is TimeoutError:
    return f'{host} did not answer within {timeout:g} s'
  if outcome[0] is not None:
    return f'{host} cannot be reached ({outcome[0]})'
  return None


@dataclasses.dataclass(frozen=True)
class Split:
  """A whole split in host memory: uint8 images [N, 32, 32, 3], int32 labels."""
  images: np.ndarray
  labels: np.ndarray

  @property
  def num_examples(self) -> int:
    return len(self.labels)


def hold_out(split: Split, count: int) -> tuple[Split, Split]:
  """(the first N - count examples, the last count): a validation set held
  out of the training split, disjoint from what is trained on."""
  if not 0 < count < split.num_examples:
    raise errors.ConfigError(
        f'data.validation_examples must be between 1 and '
        f'{split.num_examples - 1} for {split.num_examples} training '
        f'examples; got {count}.')
  cut = split.num_examples - count
  return (Split(split.images[:cut], split.labels[:cut]),
          Split(split.images[cut:], split.labels[cut:]))


def num_classes(dataset: str) -> int:
  """Number of classes of a supported dataset."""
  if dataset not in DATASETS:
    raise errors.ConfigError(f'Unknown dataset {dataset!r}; valid datasets: '
                             f'{", ".join(DATASETS)}.')
  return DATASETS[dataset]


def normalization_stats(name: str, dataset: str) -> tuple[np.ndarray,
                                                          np.ndarray]:
  """Mean and std (0-255 scale) for a preset; 'dataset' picks the dataset's."""
  key = dataset if name == 'dataset' else name
  if key not in NORMALIZATIONS:
    raise errors.ConfigError(
        f'Unknown data.normalization {name!r}; valid: dataset, '
        f'{", ".join(NORMALIZATIONS)}.')
  mean, std = NORMALIZATIONS[key]
  return (np.asarray(mean, np.float32) * 255.0,
          np.asarray(std, np.float32) * 255.0)


def _resolved_data_dir(data_dir: Optional[str]) -> str:
  if data_dir:
    return os.path.abspath(os.path.expanduser(data_dir))
  return os.environ.get('TFDS_DATA_DIR',
                        os.path.expanduser('~/tensorflow_datasets'))


def load_split(dataset: str, split: str, data_dir: Optional[str] = None,
               download: bool = True,
               max_examples: Optional[int] = None) -> Split:
  """Reads a CIFAR split from TFDS into numpy, in the dataset's order.

  Args:
    dataset: 'cifar10' or 'cifar100' (fine labels).
    split: 'train' or 'test'.
    data_dir: TFDS data directory; None uses TFDS_DATA_DIR or
      ~/tensorflow_datasets.
    download: whether TFDS may try to download and prepare a missing dataset.
    max_examples: keep only the first N examples.

  Returns:
    The split as uint8 images and int32 labels.

  Raises:
    DatasetNotFoundError: the dataset is missing and could not be prepared.
  """
  num_classes(dataset)
  searched = _resolved_data_dir(data_dir)
  if download and not is_prepared(dataset, data_dir):
    why = unreachable(DOWNLOAD_URLS[dataset], REACH_TIMEOUT_SECONDS)
    if why is not None:
      raise _not_found(dataset, searched, f'and cannot be downloaded: {why}')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # TFDS only reads the files; keep TensorFlow off any accelerator.
  tf.config.set_visible_devices([], 'GPU')
  try:
    ds = tfds.load(dataset, split=split, data_dir=data_dir,
                   download=download, shuffle_files=False)
  except Exception as e:  # TFDS raises several types for a missing dataset.
    first = str(e).splitlines()[0] if str(e) else ''
    raise _not_found(dataset, searched,
                     f'{"and could not be downloaded " if download else ""}'
                     f'({type(e).__name__}: {first})') from e
  if max_examples is not None:
    ds = ds.take(max_examples)
  images, labels = [], []
  for batch in tfds.as_numpy(ds.batch(10_000)):
    images.append(batch['image'])
    labels.append(batch['label'])
  if not images:
    raise DatasetNotFoundError(f'Split {split!r} of {dataset!r} in '
                               f'{searched} is empty.')
  return Split(images=np.concatenate(images).astype(np.uint8),
               labels=np.concatenate(labels).astype(np.int32))


def normalize(images: jax.Array, mean: np.ndarray, std: np.ndarray,
              dtype=jnp.float32) -> jax.Array:
  """uint8 (0-255) images to normalised floats."""
  return ((images.astype(jnp.float32) - mean) / std).astype(dtype)
