"""Seeds packed into one vmapped program train as their own runs would."""

import shutil

import jax
import numpy as np
import pytest

from conftest import Interrupt
from conftest import interrupted_at_dispatch
from conftest import records
from conftest import tiny_config
from jax_resnet import checkpoints
from jax_resnet import errors
from jax_resnet import metric_logging
from jax_resnet import platforms
from jax_resnet import train
from jax_resnet import validation

# Every per-seed draw on: stochastic depth, cutout, the data order.
RANDOM = {'batch_size': 8, 'data.cutout': 8,
          'model.block': 'stochastic_depth'}


def _trainer(config, seeds=None):
  train_split, test_split, _ = train.load_data(config)
  return train.Trainer(config, train.resolve_model(config), train_split,
                       test_split, seeds=seeds)


def _steps(trainer, state, steps):
  for _ in range(steps):
    order = trainer._permutation(state.step, trainer._seed)  # pylint: disable=protected-access
    state, metrics = trainer.dispatch(state, order, 1)
  return state, metrics


# Vmapped (GPU, TPU) or one seed after the other (CPU): both run here.
@pytest.mark.parametrize('vmap', [True, False], ids=['vmap', 'map'])
def test_packed_steps_equal_each_seeds_own(mock_cifar, monkeypatch, vmap):
  del mock_cifar
  monkeypatch.setattr(platforms, 'pack_by_vmap', lambda name=None: vmap)
  # Batch 16: two steps an epoch, so the third is in epoch 2's order. (At
  # batch 8 this tiny network amplifies the rounding differences of the
  # batched convolutions past 1e-5 within three steps.)
  random = {**RANDOM, 'batch_size': 16}
  config = tiny_config(**random)
  packed = _trainer(config, seeds=(3, 1))
  state, metrics = _steps(packed, packed.init_state(), 3)
  for i, seed in enumerate((3, 1)):
    alone = _trainer(tiny_config(seed=seed, **random))
    own, own_metrics = _steps(alone, alone.init_state(), 3)
    member = packed.member_state(state, i)
    assert int(member.step) == int(own.step) == 3
    # Within 1e-5 relative over the whole state: vmap batches the
    # convolutions, which sums in another order. (Tensor by tensor, a
    # near-zero BatchNorm bias reaches 2e-5 on some data.)
    a, b = (np.concatenate([np.ravel(np.asarray(x, np.float64))
                            for x in jax.tree.leaves(s)])
            for s in (member, own))
    assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b)
    for x, y in zip(jax.tree.leaves(member), jax.tree.leaves(own)):
      x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
      assert np.linalg.norm(x - y) <= 1e-4 * np.linalg.norm(y)
    np.testing.assert_allclose(metrics['train_loss'][i],
                               own_metrics['train_loss'], rtol=1e-5)
  # The seeds differ from each other: each has its own draws.
  first, second = (packed.member_state(state, i) for i in (0, 1))
  assert not np.allclose(jax.tree.leaves(first.params)[0],
                         jax.tree.leaves(second.params)[0])


def test_seeds_share_one_compiled_init(mock_cifar, monkeypatch):
  del mock_cifar
  made, compiled_init = [], train.compiled_init

  def recorded(model):
    made.append(compiled_init(model))
    return made[-1]

  monkeypatch.setattr(train, 'compiled_init', recorded)
  trainer = _trainer(tiny_config(**RANDOM), seeds=(0, 1, 2))
  state = trainer.init_state()
  assert len(made) == 1 and made[0]._cache_size() == 1  # pylint: disable=protected-access
  # Each member still has its own seed's draws.
  kernels = [jax.tree.leaves(trainer.member_state(state, i).params)[0]
             for i in range(3)]
  assert not np.allclose(kernels[0], kernels[1])
  assert not np.allclose(kernels[1], kernels[2])


def test_each_seed_writes_its_own_workdir(mock_cifar, tmp_path):
  del mock_cifar
  config = tiny_config(pack_seeds='0,1', **RANDOM)
  result = train.train_and_evaluate(config, str(tmp_path / 'packed'))
  alone_dir = tmp_path / 'alone1'
  train.train_and_evaluate(tiny_config(seed=1, **RANDOM), str(alone_dir))
  for seed in (0, 1):
    workdir = tmp_path / 'packed' / f'seed{seed}'
    history = metric_logging.read_metrics(str(workdir))
    assert [r['epoch'] for r in history] == [1, 2]
    ckpt = checkpoints.Checkpointer(str(workdir), read_only=True)
    assert ckpt.steps() == [5, 10]
    ckpt.close()
    saved = train.seed_config(config, seed)
    with open(workdir / 'config.json') as f:
      assert f.read() == saved.to_json(indent=2)
    assert saved.seed == seed and not saved.pack_seeds
    # --mode eval of the seed's workdir, with that seed's config.
    evaluated = train.evaluate(saved, str(workdir))
    assert evaluated['checkpoint_step'] == 10
  assert result['epoch'] == 2
  for packed_record, own in zip(records(tmp_path / 'packed' / 'seed1'),
                                records(alone_dir), strict=True):
    for key, value in own.items():
      assert packed_record[key] == pytest.approx(value, rel=1e-4,
                                                 abs=1e-3), key


def test_an_interrupted_group_resumes_together(mock_cifar, tmp_path,
                                               monkeypatch):
  del mock_cifar
  config = tiny_config(pack_seeds='0,2', num_epochs=3, **RANDOM)
  full, resumed = tmp_path / 'full', tmp_path / 'resumed'
  train.train_and_evaluate(config, str(full))

  with interrupted_at_dispatch(monkeypatch, 13):  # Epoch 3's third step.
    with pytest.raises(Interrupt):
      train.train_and_evaluate(config, str(resumed))
  # As if killed while saving epoch 2: seed 2's last checkpoint is missing.
  shutil.rmtree(resumed / 'seed2' / checkpoints.CHECKPOINT_DIR / '10')
  train.train_and_evaluate(config, str(resumed))
  for seed in (0, 2):
    assert records(full / f'seed{seed}') == records(resumed / f'seed{seed}')
    for directory in (full, resumed):
      ckpt = checkpoints.Checkpointer(str(directory / f'seed{seed}'),
                                      read_only=True)
      assert ckpt.steps()[-1] == 15
      ckpt.close()


@pytest.mark.parametrize('value', ['0,0', 'a,b', '-1,2'])
def test_bad_pack_seeds(value):
  with pytest.raises(errors.ConfigError, match='pack_seeds'):
    validation.pack_seeds(tiny_config(pack_seeds=value))


def test_eval_of_a_packed_config_points_to_the_seed_workdirs(tmp_path):
  with pytest.raises(errors.ConfigError,
                     match=r'seed3 --config.seed=3 --config.pack_seeds= '
                     r'\(and so on for 5\)'):
    train.evaluate(tiny_config(pack_seeds='3,5'), str(tmp_path))


def test_pack_seeds_parsing():
  assert validation.pack_seeds(tiny_config(pack_seeds=' 4,1 ')) == (4, 1)
  assert validation.pack_seeds(tiny_config()) == ()
