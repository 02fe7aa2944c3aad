"""Network sizes: exact parameter counts and MACs of every config and block,
the tables that list them (docs/zoo.md) and the papers' figures."""

import glob
import importlib
import os

import pytest

from conftest import ROOT, model_config
import golden
from jax_resnet.models import blocks
from jax_resnet.models import registry
from jax_resnet.tools import summary
from jax_resnet.tools import zoo


def config_files() -> list[str]:
  paths = glob.glob(os.path.join(ROOT, 'configs', '*.py'))
  names = {os.path.splitext(os.path.basename(p))[0] for p in paths}
  return sorted(names - {'__init__', 'default'})


class TestTablesAreComplete:
  """Every config, network and block has an entry; the docs show them."""

  def test_every_config_file_has_a_parameter_entry(self):
    assert config_files() == sorted(golden.CONFIG_PARAMS)

  def test_every_registered_network_has_an_entry(self):
    names = {zoo.load_config(c).model.name for c in golden.CONFIG_PARAMS}
    assert names == set(registry.NETWORKS)

  def test_every_registered_block_but_the_template_has_an_entry(self):
    assert sorted(golden.BLOCK_PARAMS) == sorted(set(blocks.BLOCKS) -
                                                 {'custom'})

  def test_every_config_is_in_the_zoo(self):
    assert sorted(e.config for e in zoo.ZOO) == sorted(golden.CONFIG_PARAMS)

  def test_docs_zoo_is_what_the_zoo_command_writes(self):
    # Regenerate with: python -m jax_resnet.tools.zoo > docs/zoo.md
    with open(os.path.join(ROOT, 'docs', 'zoo.md')) as f:
      assert f.read() == zoo.markdown() + '\n'

  def test_docs_zoo_shows_every_count(self):
    with open(os.path.join(ROOT, 'docs', 'zoo.md')) as f:
      page = f.read()
    rows = page.splitlines()
    for config_name, count in golden.CONFIG_PARAMS.items():
      row = [r for r in rows if f'| {config_name}.py |' in r]
      assert len(row) == 1 and f'| {count:,} |' in row[0], config_name
    for name, count in golden.BLOCK_PARAMS.items():
      assert any(r.startswith(f'| {name} | {count:,} |') for r in rows), name

  @pytest.mark.parametrize('config_name', config_files())
  def test_config_docstring_is_its_command(self, config_name):
    module = importlib.import_module(f'configs.{config_name}')
    assert f'python main.py --config configs/{config_name}.py' in (
        module.__doc__)


@pytest.mark.parametrize('config_name', sorted(golden.CONFIG_PARAMS))
def test_parameter_count(config_name):
  # zoo.measure_config is what docs/zoo.md shows (cached for that test).
  assert zoo.measure_config(config_name)[0] == (
      golden.CONFIG_PARAMS[config_name])


@pytest.mark.parametrize('block', sorted(golden.BLOCK_PARAMS))
def test_block_parameter_count(block):
  assert zoo.measure_block(block)[0] == golden.BLOCK_PARAMS[block]


@pytest.mark.parametrize('entry', zoo.ZOO, ids=lambda e: e.config)
def test_paper_sizes_match_or_are_explained(entry):
  if entry.paper_params is None:
    return
  ours = zoo.rounded_like(golden.CONFIG_PARAMS[entry.config], entry.paper_params)
  assert ours == entry.paper_params or entry.config in zoo.NOTES


class TestMultiplyAccumulates:
  """MACs: convolutions and dense layers, scanned blocks once per step."""

  @pytest.mark.parametrize('depth,expected', [
      *golden.CIFAR_RESNET_MACS.items()])
  def test_cifar_resnets(self, depth, expected):
    model = registry.create_model(model_config(depth=depth), 10)
    assert summary.count_macs(model, summary.abstract_variables(model)) == (
        expected)

  def test_scanned_equals_unrolled(self):
    counts = []
    for scan in (True, False):
      model = registry.create_model(model_config(scan_blocks=scan), 10)
      counts.append(summary.count_macs(model,
                                       summary.abstract_variables(model)))
    assert counts[0] == counts[1] == golden.CIFAR_RESNET_MACS[20]

  @pytest.mark.parametrize('overrides', [
      dict(depth=20, scan_blocks=True),
      dict(block='resnext', block_kwargs=dict(cardinality=4, base_width=16)),
      dict(name='densenet', depth=10, block='bottleneck', growth_rate=4)])
  def test_one_trace_of_init_counts_what_the_eval_pass_runs(self, overrides):
    model = registry.create_model(model_config(**overrides), 10)
    variables = summary.abstract_variables(model)
    assert summary.params_and_macs(model) == (
        summary.count_params(variables['params']),
        summary.count_macs(model, variables))

  def test_grouped_conv_costs_its_groups(self):
    full = registry.create_model(model_config(
        block='resnext', block_kwargs=dict(cardinality=1, base_width=64)), 10)
    grouped = registry.create_model(model_config(
        block='resnext', block_kwargs=dict(cardinality=4, base_width=16)), 10)
    by_module = [summary.macs_by_module(m, summary.abstract_variables(m))
                 for m in (full, grouped)]
    # Same 16-channel 3x3 stage in stage1_block1; 4 groups cost a quarter:
    # 32 * 32 * 16 * 9 * (16 - 16 / 4) MACs fewer.
    saved = by_module[0]['stage1_block1'] - by_module[1]['stage1_block1']
    assert saved == 32 * 32 * 16 * 9 * 12


def test_summary_of_a_network_without_scan():
  config = zoo.load_config('densenet_bc100_k12_cifar10')
  text = summary.summarize(config)
  params = golden.CONFIG_PARAMS['densenet_bc100_k12_cifar10']
  assert f'DenseNet-BC-100 (k=12) (densenet): {params:,} parameters' in text
  assert f'{golden.DENSENET_BC100_MACS:,} multiply-accumulates per image' in (
      text)
  assert '8x8x342' in text  # The last dense block's output.
