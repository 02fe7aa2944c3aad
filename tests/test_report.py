"""The grid report: statistics, unfinished-run marking, CSV and curves."""

import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from jax_resnet.tools import baselines
from jax_resnet.models import blocks
from jax_resnet.tools import grid
from jax_resnet import metric_logging
from jax_resnet.tools import report
from jax_resnet.tools import significance

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
NUM_EPOCHS = 3


def write_run(root, setting, block, seed, test_accuracies, state='done',
              dataset='cifar10', depth=20, parameters=272474,
              epoch_seconds=10.0, message=''):
  """A grid workdir with status.json and one metrics record per accuracy."""
  workdir = os.path.join(str(root), setting, block, f'seed{seed}')
  os.makedirs(workdir)
  best = 0.0
  with open(os.path.join(workdir, metric_logging.METRICS_FILE), 'w') as f:
    for epoch, accuracy in enumerate(test_accuracies, start=1):
      best = max(best, accuracy)
      f.write(json.dumps({
          'epoch': epoch, 'step': 10 * epoch, 'train_loss': 1.0 / epoch,
          'train_accuracy': accuracy + 5.0, 'test_loss': 1.2 / epoch,
          'test_accuracy': accuracy, 'best_test_accuracy': best,
          'learning_rate': 0.1, 'images_per_sec': 100.0,
          'epoch_seconds': epoch_seconds}) + '\n')
  status = {'setting': setting, 'block': block, 'seed': seed,
            'dataset': dataset, 'depth': depth, 'num_epochs': NUM_EPOCHS,
            'parameters': parameters, 'state': state}
  if state == 'failed':
    status.update(error_type='NonFiniteLossError', message=message)
  grid.write_status(workdir, status)
  return workdir


@pytest.fixture
def synthetic_grid(tmp_path):
  """Two settings, two blocks; finished, failed and unfinished runs."""
  root = tmp_path / 'grid'
  # Best 90, 91, 93 (mean 91.333, sample std 1.5275); final 89, 90.5, 92.5
  # (mean 90.667, sample std 1.7559).
  write_run(root, 'resnet20-cifar10', 'basic', 0, [85.0, 90.0, 89.0])
  write_run(root, 'resnet20-cifar10', 'basic', 1, [88.0, 91.0, 90.5])
  write_run(root, 'resnet20-cifar10', 'basic', 2, [90.0, 93.0, 92.5])
  write_run(root, 'resnet20-cifar10', 'gated', 0, [80.0, 84.0, 86.0],
            parameters=272483)
  write_run(root, 'resnet20-cifar10', 'gated', 1, [70.0], state='failed',
            parameters=272483,
            message='Training loss is nan at epoch 2, step 11.')
  write_run(root, 'resnet20-cifar10', 'gated', 2, [75.0, 80.0],
            state='running', parameters=272483)
  write_run(root, 'resnet56-cifar100', 'basic', 0, [40.0], state='running',
            dataset='cifar100', depth=56, parameters=861620)
  with open(root / grid.GRID_FILE, 'w') as f:
    json.dump({'settings': ['resnet20-cifar10', 'resnet56-cifar100'],
               'blocks': ['gated', 'basic'], 'seeds': [0, 1, 2]}, f)
  return root


def read_csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_mean_and_sample_std():
  assert report.mean_std([90.0, 91.0, 93.0]) == pytest.approx(
      (91.3333333, 1.5275252))
  assert report.mean_std([84.0]) == (84.0, None)


def test_markdown_statistics_and_unfinished_runs(synthetic_grid):
  written = report.write_report(str(synthetic_grid))
  with open(written['markdown']) as f:
    text = f.read()
  rows = {line.split(' | ')[0][2:]: line.split(' | ')[1:]
          for line in text.splitlines() if line.startswith('| ')}
  # grid.json orders the rows: gated before basic.
  assert list(rows) == ['block', 'gated', 'basic']
  basic_r20, basic_r56 = rows['basic'][0], rows['basic'][1]
  assert basic_r20.startswith('**91.33 ± 1.53** (n=3)')
  assert 'final 90.67 ± 1.76' in basic_r20
  assert '0.27M params, 30 s/run' in basic_r20
  assert 'failed' not in basic_r20 and 'in progress' not in basic_r20
  gated = rows['gated'][0]
  assert gated.startswith('**86.00** (n=1)')  # One finished seed: no ±.
  assert '1 failed' in gated and '1 in progress (2/3 epochs)' in gated
  assert basic_r56.startswith('—')
  assert '1 in progress (1/3 epochs)' in basic_r56
  assert rows['gated'][1].strip(' |') == ''  # No runs there.
  assert 'ddof=1' in text
  assert '## Failed runs' in text and 'Training loss is nan' in text
  assert '## In progress' in text and 'published' not in text


def test_csv_holds_the_same_numbers(synthetic_grid):
  written = report.write_report(str(synthetic_grid))
  rows = {r['block']: r for r in read_csv(written['csv'])}
  basic = rows['basic']
  assert basic['kind'] == 'measured'
  assert float(basic['resnet20-cifar10/best_mean']) == pytest.approx(
      91.3333, abs=1e-4)
  assert float(basic['resnet20-cifar10/best_std']) == pytest.approx(
      1.5275, abs=1e-4)
  assert float(basic['resnet20-cifar10/final_std']) == pytest.approx(
      1.7559, abs=1e-4)
  assert basic['resnet20-cifar10/n'] == '3'
  assert basic['resnet20-cifar10/parameters'] == '272474'
  assert float(basic['resnet20-cifar10/train_seconds_mean']) == 30.0
  assert basic['resnet56-cifar100/n'] == '0'
  assert basic['resnet56-cifar100/best_mean'] == ''
  assert basic['resnet56-cifar100/in_progress'] == '1'
  gated = rows['gated']
  assert gated['resnet20-cifar10/best_std'] == ''
  assert (gated['resnet20-cifar10/failed'],
          gated['resnet20-cifar10/in_progress']) == ('1', '1')
  runs = read_csv(written['runs'])
  assert len(runs) == 7
  assert sorted(r['state'] for r in runs).count('failed') == 1


def test_curves_are_pngs(synthetic_grid):
  written = report.write_report(str(synthetic_grid),
                                metrics=('test_accuracy', 'train_error'),
                                layout='single')
  for metric in ('test_accuracy', 'train_error'):
    with open(written[metric], 'rb') as f:
      assert f.read(8) == PNG_MAGIC
  with open(written['markdown']) as f:
    assert '(curves_train_error.png)' in f.read()


def test_seed_band_is_mean_min_max_over_runs_at_each_epoch(synthetic_grid):
  runs = [r for r in report.collect(str(synthetic_grid))
          if r.block == 'gated' and r.setting == 'resnet20-cifar10']
  epochs, mean, low, high = report.seed_band(runs, 'test_error')
  assert epochs == [1, 2, 3]
  assert mean == pytest.approx([25.0, 18.0, 14.0])  # (20+30+25)/3, ...
  assert low == pytest.approx([20.0, 16.0, 14.0])
  assert high == pytest.approx([30.0, 20.0, 14.0])


def test_baselines_beside_measured_rows(synthetic_grid):
  written = report.write_report(str(synthetic_grid), with_baselines=True)
  with open(written['markdown']) as f:
    text = f.read()
  row = next(line for line in text.splitlines()
             if line.startswith('| *published:* ResNet-20 '))
  assert '(He et al. 2015, Table 6)' in row
  assert row.split(' | ')[1] == '91.25'  # 100 - 8.75, resnet20-cifar10.
  assert 'pre-act ResNet-164, cifar100: 75.67' in text  # No column for it.
  published = [r for r in read_csv(written['csv'])
               if r['kind'] == 'published']
  assert [r['resnet20-cifar10/best_mean'] for r in published] == ['91.25']


def test_every_baseline_names_a_registered_block_and_a_source():
  for b in baselines.BASELINES:
    assert b.block in blocks.BLOCKS, b
    assert b.paper in baselines.PAPERS and b.table, b
    assert 0.0 < b.test_error < 100.0


def test_command_line(synthetic_grid):
  env = dict(os.environ, MPLBACKEND='Agg')
  proc = subprocess.run(
      [sys.executable, '-m', 'jax_resnet.tools.report', str(synthetic_grid),
       '--baselines', '--metric=test_accuracy,train_loss'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert os.path.exists(synthetic_grid / 'curves_train_loss.png')
  bad = subprocess.run(
      [sys.executable, '-m', 'jax_resnet.tools.report', str(synthetic_grid),
       '--metric=accuracy'], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=300)
  assert bad.returncode == 2 and 'valid: test_accuracy' in bad.stderr


def test_runs_judged_by_their_ema_report_the_ema(tmp_path):
  """A run whose config says eval_weights='ema' is tabulated with its EMA's
  accuracies, and the report says so."""
  root = tmp_path / 'grid'
  workdir = write_run(root, 'resnet20-cifar10-ema', 'basic', 0,
                      [50.0, 60.0, 55.0])
  path = os.path.join(workdir, metric_logging.METRICS_FILE)
  history = metric_logging.read_metrics(workdir)
  best = 0.0
  with open(path, 'w') as f:
    for record, ema in zip(history, [52.0, 63.0, 61.0]):
      best = max(best, ema)
      f.write(json.dumps({**record, 'ema_test_accuracy': ema,
                          'best_ema_test_accuracy': best}) + '\n')
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump({'eval_weights': 'ema'}, f)
  (run,) = report.collect(str(root))
  assert (run.weights, run.best_accuracy, run.final_accuracy) == (
      'ema', 63.0, 61.0)
  report.write_report(str(root))
  with open(root / 'results.md') as f:
    text = f.read()
  assert 'resnet20-cifar10-ema (ema)' in text and '63.00' in text


class TestSignificance:
  """Welch's comparison against scipy and by hand; --compare."""

  A = [91.2, 91.9, 92.4, 91.5]
  B = [90.1, 90.9, 90.4]

  def test_welch_by_hand_and_against_scipy(self):
    import numpy as np  # pylint: disable=g-import-not-at-top
    from scipy import stats  # pylint: disable=g-import-not-at-top
    w = significance.welch(self.A, self.B)
    a, b = np.asarray(self.A), np.asarray(self.B)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    diff = a.mean() - b.mean()
    half = stats.t.ppf(0.975, df) * np.sqrt(va + vb)
    p = 2 * stats.t.sf(abs(diff) / np.sqrt(va + vb), df)
    assert w.difference == pytest.approx(diff)
    assert (w.ci_low, w.ci_high) == pytest.approx((diff - half, diff + half))
    assert w.p_value == pytest.approx(p)
    assert w.p_value == pytest.approx(
        stats.ttest_ind(self.A, self.B, equal_var=False).pvalue)
    assert (w.n_a, w.n_b) == (4, 3)

  def test_one_seed_gives_only_the_difference(self):
    w = significance.welch([90.0], self.B)
    assert w.difference == pytest.approx(90.0 - sum(self.B) / 3)
    assert (w.ci_low, w.ci_high, w.p_value) == (None, None, None)

  def test_compare_flag_writes_the_table(self, tmp_path):
    root = tmp_path / 'grid'
    for seed, (a, b) in enumerate(zip(self.A, self.B + [None])):
      write_run(root, 'resnet20-cifar10', 'gated', seed, [80.0, a, a - 0.5])
      if b is not None:
        write_run(root, 'resnet20-cifar10', 'basic', seed, [80.0, b, b])
    written = report.write_report(str(root), compare='basic')
    with open(written['comparison']) as f:
      text = f.read()
    w = significance.welch(self.A, self.B)
    row = [line for line in text.splitlines()
           if line.startswith('| resnet20-cifar10 | gated |')]
    assert len(row) == 1
    assert (f'| 4 vs 3 | {w.difference:+.2f} | [{w.ci_low:+.2f}, '
            f'{w.ci_high:+.2f}] | {w.p_value:.3g} |') in row[0]
    assert 'selected on the test set itself' in text
    # A setting works as the reference too; an unknown name says what is.
    report.write_report(str(root), compare='resnet20-cifar10')
    with pytest.raises(ValueError, match="neither a block .*basic.* nor a "
                       'setting'):
      report.write_report(str(root), compare='preact')
    out = subprocess.run(
        [sys.executable, '-m', 'jax_resnet.tools.report', str(root),
         '--compare', 'basic'], cwd=ROOT, capture_output=True, text=True,
        timeout=300)
    assert out.returncode == 0, out.stderr
    assert '# Against block basic' in out.stdout


def test_report_uses_the_selected_epoch_and_says_how(tmp_path):
  root = tmp_path / 'grid'
  workdir = write_run(root, 'resnet20-cifar10', 'basic', 0,
                      [50.0, 60.0, 55.0])
  path = os.path.join(workdir, metric_logging.METRICS_FILE)
  history = metric_logging.read_metrics(workdir)
  with open(path, 'w') as f:
    for record in history:
      # Validation chose epoch 3 (test 55), not epoch 2 (test 60).
      f.write(json.dumps({**record, 'selected_test_accuracy': 55.0}) + '\n')
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump({'data': {'validation_examples': 5000}}, f)
  (run,) = report.collect(str(root))
  assert (run.selection, run.best_accuracy) == ('validation', 55.0)
  report.write_report(str(root))
  with open(root / 'results.md') as f:
    text = f.read()
  assert 'held out of the training set' in text and '55.00' in text


def test_welch_without_spread_gives_only_the_difference():
  w = significance.welch([90.0, 90.0], [89.0, 89.0])
  assert w.difference == pytest.approx(1.0)
  assert (w.ci_low, w.ci_high, w.p_value) == (None, None, None)
