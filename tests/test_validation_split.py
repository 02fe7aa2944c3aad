"""data.validation_examples: a held-out split that selects the checkpoint."""

import numpy as np
import pytest

from conftest import records, tiny_config
from jax_resnet import errors
from jax_resnet import input_pipeline
from jax_resnet import train


def test_hold_out_is_the_last_examples_and_disjoint():
  images = np.arange(10 * 32 * 32 * 3, dtype=np.uint32).reshape(
      10, 32, 32, 3).astype(np.uint8)
  split = input_pipeline.Split(images, np.arange(10, dtype=np.int32))
  rest, held = input_pipeline.hold_out(split, 3)
  np.testing.assert_array_equal(rest.labels, np.arange(7))
  np.testing.assert_array_equal(held.labels, [7, 8, 9])
  np.testing.assert_array_equal(held.images, images[7:])
  for bad in (0, 10):
    with pytest.raises(errors.ConfigError, match='between 1 and 9'):
      input_pipeline.hold_out(split, bad)


def test_load_data_holds_out_validation_disjoint_from_training(mock_cifar):
  del mock_cifar
  full = train.load_data(tiny_config()).train
  splits = train.load_data(tiny_config(**{'data.validation_examples': 8}))
  assert splits.validation.num_examples == 8
  assert splits.train.num_examples == full.num_examples - 8
  np.testing.assert_array_equal(splits.validation.images, full.images[-8:])
  np.testing.assert_array_equal(splits.train.images, full.images[:-8])
  trained = {image.tobytes() for image in splits.train.images}
  assert not any(image.tobytes() in trained
                 for image in splits.validation.images)
  # data.train_examples takes the first of the examples left for training.
  limited = train.load_data(tiny_config(**{'data.validation_examples': 8,
                                           'data.train_examples': 16}))
  np.testing.assert_array_equal(limited.train.images, full.images[:16])
  np.testing.assert_array_equal(limited.validation.images, full.images[-8:])
  assert train.load_data(tiny_config()).validation is None
  with pytest.raises(errors.ConfigError, match='data.train_examples=40 is '
                     'more than the 32 training examples left'):
    train.load_data(tiny_config(**{'data.validation_examples': 8,
                                   'data.train_examples': 40}))


def test_best_checkpoint_is_chosen_on_validation(mock_cifar, tmp_path):
  del mock_cifar
  config = tiny_config(num_epochs=4, **{'data.validation_examples': 8})
  final = train.train_and_evaluate(config, str(tmp_path))
  history = records(tmp_path)
  for r in history:
    assert 0 <= r['validation_accuracy'] <= 100 and 'validation_loss' in r
  # The latest epoch of the highest validation accuracy.
  chosen = max(history, key=lambda r: (r['validation_accuracy'], r['epoch']))
  assert final['selected_test_accuracy'] == chosen['test_accuracy']
  assert final['best_validation_accuracy'] == chosen['validation_accuracy']
  result = train.evaluate(config, str(tmp_path))
  assert result['checkpoint_epoch'] == chosen['epoch']
  assert result['test_accuracy'] == pytest.approx(chosen['test_accuracy'])


def test_without_validation_the_selection_is_the_best_test_accuracy(
    mock_cifar, tmp_path):
  del mock_cifar
  final = train.train_and_evaluate(tiny_config(num_epochs=2), str(tmp_path))
  assert final['selected_test_accuracy'] == final['best_test_accuracy']
  assert 'validation_accuracy' not in final
