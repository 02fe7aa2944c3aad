"""The training loop's dispatches: one compiled call per ``steps_per_dispatch``
steps with the batch gathered inside it, one call per evaluation, no host
transfers, and the CPU-only work gated to the CPU backend."""

import os

import jax
from jax import numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import fake_x86_cpu
from conftest import records
from conftest import tiny_config
from jax_resnet import checkpoints
from jax_resnet import errors
from jax_resnet import platforms
from jax_resnet import runtime
from jax_resnet import train
from jax_resnet.models import registry
from jax_resnet.ops import cpu_kernels


def _trainer(config):
  train_split, test_split, _ = train.load_data(config)
  return train.Trainer(config, train.resolve_model(config), train_split,
                       test_split)


def test_an_epoch_is_one_call_per_dispatch_and_eval_one_call(mock_cifar):
  del mock_cifar
  config = tiny_config(batch_size=8, steps_per_dispatch=2)  # 5 steps.
  trainer = _trainer(config)
  counts = []
  dispatch = trainer.dispatch
  trainer.dispatch = lambda s, o, n: counts.append(n) or dispatch(s, o, n)
  state, metrics = trainer.train_epoch(trainer.init_state(), 0)
  assert counts == [2, 2, 1] and int(state.step) == 5
  assert np.isfinite(metrics[0]['train_loss'])
  first = trainer.evaluate(state)  # Compiles the evaluation.
  evaluation = trainer._evaluations['raw']  # pylint: disable=protected-access
  calls = []
  trainer._evaluations['raw'] = (  # pylint: disable=protected-access
      lambda *args: calls.append(1) or evaluation(*args))
  assert trainer.evaluate(state) == first
  assert calls == [1]  # Three batches of 16, in one call.
  assert trainer.eval_sets['test'].num_batches == 3


def test_a_host_array_in_the_loop_fails(mock_cifar):
  """The loop runs under jax.transfer_guard('disallow'): data left on the
  host by mistake is an error, not a silent copy every step."""
  del mock_cifar
  trainer = _trainer(tiny_config())
  state = trainer.init_state()
  trainer.train_images = np.asarray(trainer.train_images)
  with pytest.raises(Exception, match='[Dd]isallowed host-to-device'):
    trainer.train_epoch(state, 0)


@pytest.mark.parametrize('processes, asked_at', [
    (1, [1, 2, 3, 4, 5]),  # After each dispatch: a signal stops at once.
    (2, [2, 4, 5]),  # A collective: only where the metrics come back.
])
def test_where_the_loop_asks_whether_to_stop(mock_cifar, monkeypatch,
                                             processes, asked_at):
  del mock_cifar
  monkeypatch.setattr(train.distributed, 'is_multi_process',
                      lambda: processes > 1)
  trainer = _trainer(tiny_config(batch_size=8, log_every_steps=2))  # 5 steps.
  steps, asked = [], []
  dispatch = trainer.dispatch
  trainer.dispatch = lambda s, o, n: steps.append(n) or dispatch(s, o, n)
  _, progress = trainer.run_steps(
      trainer.init_state(), 0, train.EpochProgress.start(1),
      should_stop=lambda: asked.append(sum(steps)) or False)
  assert progress.done == 5 and asked == asked_at
  # Told to stop the first time it asks: it stops there.
  _, progress = trainer.run_steps(trainer.init_state(), 0,
                                  train.EpochProgress.start(1),
                                  should_stop=lambda: True)
  assert progress.done == asked_at[0]


def _final(config, workdir):
  train.train_and_evaluate(config, str(workdir))
  ckpt = checkpoints.Checkpointer(str(workdir), read_only=True)
  trainer_state = _trainer(config).abstract_state()
  state, _ = ckpt.restore('latest', trainer_state,
                          train.checkpoint_fit(config,
                                               train.resolve_model(config)))
  ckpt.close()
  return state


def test_steps_per_dispatch_equals_one_step_at_a_time(mock_cifar, tmp_path):
  del mock_cifar
  # 5 steps an epoch: dispatches of 4 and 1, over 2 epochs, with the step's
  # randomness on (stochastic depth, cutout).
  kwargs = {'batch_size': 8, 'data.cutout': 8,
            'model.block': 'stochastic_depth'}
  one = _final(tiny_config(steps_per_dispatch=1, **kwargs), tmp_path / 'k1')
  four = _final(tiny_config(steps_per_dispatch=4, **kwargs), tmp_path / 'k4')
  assert int(one.step) == int(four.step) == 10
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
    np.testing.assert_allclose(np.asarray(a, np.float64),
                               np.asarray(b, np.float64), rtol=1e-4,
                               atol=1e-5)
  for r1, r4 in zip(records(tmp_path / 'k1'), records(tmp_path / 'k4'),
                    strict=True):
    assert r1.keys() == r4.keys()
    for key in r1:
      assert r4[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-4), key


class TestBackendGating:
  """The CPU-only work is chosen by one function of the platform."""

  @pytest.mark.parametrize('name,expected', [('cpu', True), ('gpu', False),
                                             ('tpu', False)])
  def test_cpu_work(self, name, expected):
    assert platforms.cpu_work(name) is expected

  def test_packed_seeds_vmapped_off_the_cpu(self):
    assert not platforms.pack_by_vmap('cpu')
    assert platforms.pack_by_vmap('gpu') and platforms.pack_by_vmap('tpu')

  def test_steps_per_dispatch(self):
    assert platforms.steps_per_dispatch('auto', 'cpu') == 1
    assert platforms.steps_per_dispatch('auto', 'gpu') == (
        platforms.ACCELERATOR_STEPS_PER_DISPATCH)
    assert platforms.steps_per_dispatch('auto', 'tpu') == (
        platforms.ACCELERATOR_STEPS_PER_DISPATCH)
    assert platforms.steps_per_dispatch(3, 'gpu') == 3
    for bad in (0, -2, 'fast', 1.5, True):
      with pytest.raises(errors.ConfigError, match='steps_per_dispatch'):
        platforms.steps_per_dispatch(bad, 'cpu')

  def test_xla_cpu_flags_only_for_xla_convolutions_on_the_cpu(self):
    assert runtime.cpu_xla_flags('cpu', 'xla', True) == runtime.CPU_XLA_FLAGS
    assert runtime.cpu_xla_flags('cpu', 'auto', False) == (
        runtime.CPU_XLA_FLAGS)
    assert runtime.cpu_xla_flags('cpu', 'auto', True) == ()
    for name in ('gpu', 'tpu'):
      for backend in ('xla', 'auto'):
        assert runtime.cpu_xla_flags(name, backend, False) == ()

  @pytest.mark.parametrize('features,bf16_env,expected', [
      # AVX2 only: float32 kernels; bf16 convolutions are XLA's (its flags).
      ({'avx2', 'fma'}, None, {'float32': True, 'bfloat16': False}),
      ({'avx2', 'fma'}, 'reference', {'float32': True, 'bfloat16': True}),
      ({'avx2', 'fma'}, 'amx ', {'float32': True, 'bfloat16': True}),
      ({'avx2', 'fma'}, 'bogus', {'float32': True, 'bfloat16': False}),
      ({'avx512f', 'avx512dq', 'avx512bw', 'avx512vl', 'fma',
        'avx512_bf16'}, None, {'float32': True, 'bfloat16': True}),
      ({'avx512f', 'avx512dq', 'avx512bw', 'avx512vl', 'fma',
        'avx512_bf16'}, 'none', {'float32': True, 'bfloat16': False}),
      ({'sse4_2'}, 'reference', {'float32': False, 'bfloat16': False}),
  ])
  def test_kernels_run_by_dtype(self, monkeypatch, features, bf16_env,
                                expected):
    """The XLA CPU flags follow what the network's convolutions run on."""
    fake_x86_cpu(monkeypatch, features)
    monkeypatch.delenv(cpu_kernels.ISA_ENV, raising=False)
    if bf16_env is None:
      monkeypatch.delenv('JAX_RESNET_BF16_ISA', raising=False)
    else:
      monkeypatch.setenv('JAX_RESNET_BF16_ISA', bf16_env)
    assert {d: runtime.kernels_run(d) for d in expected} == expected

  @pytest.mark.parametrize('model,flagged', [
      (None, False), ({'dtype': 'float32'}, False),
      ({'dtype': 'bfloat16'}, True),
      ({'conv_backend': 'xla', 'dtype': 'float32'}, True)])
  def test_a_command_sets_the_flags_for_its_network(self, monkeypatch, model,
                                                    flagged):
    """On an AVX2 CPU: the kernels run float32 networks (no XLA CPU flags);
    a bf16 one, or conv_backend='xla', runs XLA's convolutions (flags)."""
    fake_x86_cpu(monkeypatch, {'avx2', 'fma'})
    monkeypatch.setattr(platforms, 'expected_platform', lambda: 'cpu')
    for name in (cpu_kernels.ISA_ENV, 'JAX_RESNET_BF16_ISA'):
      monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('XLA_FLAGS', '')
    monkeypatch.setattr(runtime.logging, 'set_verbosity', lambda level: None)
    config = None if model is None else ml_collections.ConfigDict(model)
    runtime.start_command(['command'], config)
    assert os.environ['XLA_FLAGS'] == (
        ' '.join(runtime.CPU_XLA_FLAGS) if flagged else '')

  @pytest.mark.parametrize('environ,expected', [
      ({'JAX_PLATFORMS': 'cuda'}, 'gpu'), ({'JAX_PLATFORMS': 'tpu,cpu'}, 'tpu'),
      ({'JAX_PLATFORMS': 'cpu'}, 'cpu'), ({'JAX_PLATFORMS': 'rocm'}, 'gpu')])
  def test_expected_platform_from_the_environment(self, environ, expected):
    assert platforms.expected_platform(environ) == expected

  @pytest.mark.parametrize('cpu', [True, False], ids=['cpu', 'accelerator'])
  def test_the_train_step_program_follows_the_choice(self, cpu, monkeypatch):
    """Off the CPU, the step's program has no optimisation barriers (BatchNorm,
    canonical convolution gradients) and no custom calls (CPU kernels)."""
    monkeypatch.setattr(platforms, 'cpu_work', lambda name=None: cpu)
    config = tiny_config(**{'model.scan_blocks': True,
                            'model.conv_backend': 'xla'})
    model = registry.resolve(config.model, 10).module
    state = train.create_train_state(config, model, 2)
    batch = {'image': jnp.zeros((4, 32, 32, 3), jnp.uint8),
             'label': jnp.zeros((4,), jnp.int32)}
    program = str(jax.make_jaxpr(
        lambda s, b: train.train_step(s, b, train.step_config(config)))(
            state, batch))
    assert ('optimization_barrier' in program) is cpu
    assert 'custom_call' not in program and 'ffi_call' not in program
