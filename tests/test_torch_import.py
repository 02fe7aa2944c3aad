"""The PyTorch importer: checkpoint formats, errors, and the command line
(import, then evaluate, reproduces PyTorch's accuracy)."""

import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

# pylint: disable=g-import-not-at-top,wrong-import-position
from conftest import ROOT, run_main
from jax_resnet import checkpoints
from jax_resnet import distillation
from jax_resnet import input_pipeline
from jax_resnet import train
from jax_resnet.interop import torch_import
import synthetic_cifar
from torch_cases import make_pair, max_abs_diff, report, to_torch


def saved_checkpoint(tmp_path, state_dict, name='model.pt'):
  path = str(tmp_path / name)
  torch.save(state_dict, path)
  return path


def test_importer_reads_bare_wrapped_and_dataparallel_checkpoints(tmp_path):
  _, model, reference, variables = make_pair('basic')
  state_dict = reference.state_dict()
  assert any(k.endswith('num_batches_tracked') for k in state_dict)
  parallel = {'module.' + k: v for k, v in state_dict.items()}
  with_fc = {k.replace('linear.', 'fc.'): v for k, v in state_dict.items()}
  forms = {
      'bare': state_dict,
      'wrapped': {'state_dict': state_dict, 'epoch': 200, 'best_prec1': 92.1},
      'dataparallel': parallel,
      'wrapped_dataparallel': {'state_dict': parallel, 'epoch': 3},
      'fc_head': {'net': with_fc, 'acc': 91.0},
  }
  for form, checkpoint in forms.items():
    loaded = torch_import.load_torch_checkpoint(
        saved_checkpoint(tmp_path, checkpoint, f'{form}.pt'))
    converted = torch_import.torch_to_flax(loaded, model)
    assert max_abs_diff(converted, variables) == 0.0, form


@pytest.mark.parametrize('edit, message', [
    (lambda sd: sd.pop('layer2.0.conv1.weight'),
     r'1 missing: layer2\.0\.conv1\.weight'),
    (lambda sd: sd.__setitem__('layer4.0.conv1.weight',
                               torch.zeros(64, 64, 3, 3)),
     r'1 unexpected: layer4\.0\.conv1\.weight'),
    (lambda sd: sd.__setitem__('linear.weight', torch.zeros(100, 64)),
     r'1 wrong shape: linear\.weight: checkpoint \(100, 64\), network '
     r'\(10, 64\)'),
])
def test_importer_refuses_a_checkpoint_that_does_not_fit(tmp_path, edit,
                                                         message):
  config, _, reference, _ = make_pair('basic')
  state_dict = reference.state_dict()
  edit(state_dict)
  path = saved_checkpoint(tmp_path, state_dict)
  workdir = tmp_path / 'run'
  with pytest.raises(torch_import.ConversionError, match=message):
    torch_import.convert(config, path, str(workdir))
  assert not workdir.exists()  # No partial import.


def test_importer_refuses_a_pickled_module(tmp_path):
  path = saved_checkpoint(tmp_path, torch.nn.Linear(2, 2))
  with pytest.raises(torch_import.ConversionError, match='not pickled modules'):
    torch_import.load_torch_checkpoint(path)


def test_importer_lists_every_problem():
  _, model, reference, _ = make_pair('basic')
  state_dict = reference.state_dict()
  del state_dict['bn1.running_var'], state_dict['linear.bias']
  state_dict['layer1.0.conv1.weight'] = torch.zeros(16, 16, 1, 1)
  state_dict['extra.weight'] = torch.zeros(3)
  with pytest.raises(torch_import.ConversionError) as error:
    torch_import.torch_to_flax(state_dict, model)
  text = str(error.value)
  for key in ('bn1.running_var', 'linear.bias or fc.bias', 'extra.weight',
              'layer1.0.conv1.weight: checkpoint (16, 16, 1, 1)'):
    assert key in text


def test_convert_then_eval_reproduces_torch_accuracy(tmp_path):
  config, _, reference, _ = make_pair('basic', depth=8)
  config.data.normalization = 'imagenet'
  parallel = {'module.' + k: v for k, v in reference.state_dict().items()}
  checkpoint = saved_checkpoint(tmp_path, {'state_dict': parallel,
                                           'epoch': 200})
  workdir = str(tmp_path / 'imported')
  args = ['--config', os.path.join(ROOT, 'configs', 'resnet20_cifar10.py'),
          '--config.model.depth=8', '--config.data.normalization=imagenet',
          '--config.batch_size=16', '--config.eval_batch_size=16',
          '--config.data.download=False',
          f'--config.data_dir={config.data_dir}', f'--workdir={workdir}']
  out = run_main(args + [f'--torch-checkpoint={checkpoint}'],
                 script=os.path.join(ROOT, 'tests', 'mock_convert.py'))
  imported = json.loads(out.stdout.strip().splitlines()[-1])
  assert imported['workdir'] == workdir
  result = json.loads(run_main(
      args + ['--mode=eval']).stdout.strip().splitlines()[-1])

  with synthetic_cifar.synthetic_cifar(40):
    test_split = train.load_data(config, train=False).test
  mean, std = input_pipeline.normalization_stats('imagenet', 'cifar10')
  images = (test_split.images.astype(np.float32) - mean) / std
  labels = torch.from_numpy(test_split.labels).long()
  with torch.no_grad():
    logits = reference.eval()(to_torch(images))
  accuracy = 100.0 * np.mean(logits.argmax(-1).numpy() == test_split.labels)
  loss = float(torch.nn.functional.cross_entropy(logits, labels))
  report('CLI eval loss vs torch, abs diff', abs(result['test_loss'] - loss))
  assert result['test_accuracy'] == pytest.approx(accuracy, abs=1e-9)
  # The import evaluated it, and ranks it by that accuracy: a fine-tuned
  # epoch becomes the best checkpoint only by equalling or beating it.
  assert imported['test_accuracy'] == pytest.approx(accuracy, abs=1e-9)
  assert result['test_loss'] == pytest.approx(loss, rel=1e-5)
  assert result['checkpoint_step'] == 0

  # The imported network serves as a distillation teacher: same logits.
  student = copy.deepcopy(config)
  student.distill.teacher_workdir = workdir
  teacher = distillation.load_teacher(student)
  np.testing.assert_allclose(
      teacher.logits(jnp.asarray(images), mean, std), logits.numpy(),
      rtol=1e-4, atol=1e-4)

  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  try:
    assert ckpt.steps() == [0]
    meta = ckpt.metadata(0)
  finally:
    ckpt.close()
  assert meta['best_test_accuracy'] == pytest.approx(accuracy, abs=1e-9)
  assert meta['selected_test_accuracy'] == meta['best_test_accuracy']
  assert meta['selection_metric'] == 'test_accuracy'
  with pytest.raises(torch_import.ConversionError,
                     match='already holds checkpoints'):
    torch_import.convert(config, checkpoint, workdir)


def test_imported_weights_start_the_averages(tmp_path):
  """With ema_decay and SWA on, the EMA starts at the imported weights (not
  at a random initialisation), so an imported EMA-judged workdir evaluates,
  fine-tunes and teaches with them."""
  config, _, reference, variables = make_pair('basic', scan_blocks=False,
                                              depth=8)
  config.batch_size = config.eval_batch_size = 16
  config.ema_decay = 0.999
  config.swa_start_epoch = 1
  config.num_epochs = 1
  checkpoint = saved_checkpoint(tmp_path, reference.state_dict())
  workdir = str(tmp_path / 'imported')
  with synthetic_cifar.synthetic_cifar(40):
    torch_import.convert(config, checkpoint, workdir)
    model = train.resolve_model(config)
    trainer = train.Trainer(config, model,
                            *train.load_data(config, train=False))
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  try:
    state, _ = ckpt.restore('latest', trainer.abstract_state(),
                            train.checkpoint_fit(config, model))
  finally:
    ckpt.close()
  for weights in ('raw', 'ema', 'swa'):
    for a, b in zip(jax.tree.leaves(state.variables(weights)),
                    jax.tree.leaves(variables)):
      np.testing.assert_array_equal(a, b)
  assert int(state.averages['swa']['count']) == 0
