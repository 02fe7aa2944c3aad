"""Results of a grid: a table per block and setting, and learning curves.

  python -m jax_resnet.tools.report runs/grid
  python -m jax_resnet.tools.report runs/grid --baselines
  python -m jax_resnet.tools.report runs/degradation --metric train_error \
      --layout single
  python -m jax_resnet.tools.report runs/grid --compare basic

Reads every run under the root (the grid's ``status.json`` and
``metrics.jsonl``; a plain main.py workdir with ``config.json`` works too) and
writes into the root:

- ``results.md``: one row per block, one column per setting; a cell holds the
  best test accuracy (that of the epoch the run's selection keeps: the best
  on the test set, or on the validation split with
  ``data.validation_examples``; the page says which) as mean ± sample
  standard deviation (ddof=1) over the n finished seeds, the final-epoch accuracy the same way, the parameters and
  the training time per run, and how many runs failed or are in progress
  (those are not in the statistics).
- ``results.csv``: the same numbers, a column group per setting;
  ``runs.csv``: one row per run.
- ``comparison.md`` (``--compare BLOCK``, or a setting): every other block
  in each setting against BLOCK: the difference of mean best and final
  accuracy, its 95% confidence interval and Welch's t-test p-value over
  seeds (significance.py).
- ``curves_<metric>.png``: the metric against the epoch, one line per block
  (the mean over seeds) with a band from the lowest to the highest seed, one
  panel per setting (``--layout single``: every block and setting in one
  panel, as for plain vs residual training error).
"""

import csv
import dataclasses
import json
import math
import os
import statistics
import sys
from typing import Any, Callable, Optional, Sequence

from absl import app
from absl import flags

from jax_resnet.tools import baselines
from jax_resnet.tools import grid
from jax_resnet.tools import significance
from jax_resnet import metric_logging

# Metric name -> (axis label, value of an epoch record).
METRICS: dict[str, tuple[str, Callable[[dict[str, Any]], float]]] = {
    'test_accuracy': ('test accuracy (%)', lambda r: r['test_accuracy']),
    'test_error': ('test error (%)', lambda r: 100.0 - r['test_accuracy']),
    'train_accuracy': ('training accuracy (%)',
                       lambda r: r['train_accuracy']),
    'train_error': ('training error (%)',
                    lambda r: 100.0 - r['train_accuracy']),
    'train_loss': ('training loss', lambda r: r['train_loss']),
    'test_loss': ('test loss', lambda r: r['test_loss']),
}
LAYOUTS = ('by_setting', 'single')
DONE, FAILED, IN_PROGRESS = 'done', 'failed', 'in progress'


@dataclasses.dataclass
class RunResult:
  """One run's identity, state and epoch records."""
  setting: str
  block: str
  seed: int
  state: str  # DONE, FAILED or IN_PROGRESS.
  workdir: str
  dataset: str
  depth: int
  num_epochs: int
  parameters: Optional[int]
  history: list[dict[str, Any]]
  message: str = ''
  # The weights the run is judged by (its config's eval_weights): 'raw', or
  # 'ema', whose accuracies (ema_test_accuracy) the table then shows.
  weights: str = 'raw'
  # What chose its best checkpoint: 'test' or 'validation' (its config's
  # data.validation_examples).
  selection: str = 'test'

  @property
  def _accuracy_key(self) -> str:
    return 'test_accuracy' if self.weights == 'raw' else (
        f'{self.weights}_test_accuracy')

  @property
  def best_accuracy(self) -> Optional[float]:
    """The test accuracy of the selected epoch: the best on validation with
    a validation split, else the best test accuracy."""
    if not self.history:
      return None
    last = self.history[-1]
    if 'selected_test_accuracy' in last:
      return last['selected_test_accuracy']
    return last[f'best_{self._accuracy_key}']  # Records before selection.

  @property
  def final_accuracy(self) -> Optional[float]:
    return self.history[-1][self._accuracy_key] if self.history else None

  @property
  def train_seconds(self) -> float:
    return sum(r['epoch_seconds'] for r in self.history)

  @property
  def progress(self) -> str:
    return f'{len(self.history)}/{self.num_epochs} epochs'


def _read_json(path: str) -> Optional[dict[str, Any]]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_run(root: str, workdir: str) -> Optional[RunResult]:
  """A run from its workdir; None if the directory holds no run."""
  status = grid.read_status(workdir)
  config = _read_json(os.path.join(workdir, 'config.json'))
  history = metric_logging.read_metrics(workdir)
  if status is None and config is None:
    return None
  if status is None:
    # A main.py workdir: the setting is its first directory under the root.
    first = os.path.relpath(workdir, root).split(os.sep)[0]
    if first == '.':
      first = os.path.basename(os.path.abspath(root))
    status = {'setting': first,
              'block': config['model']['block'], 'seed': config['seed'],
              'dataset': config['dataset'],
              'depth': config['model']['depth'],
              'num_epochs': config['num_epochs']}
  num_epochs = status['num_epochs']
  if status.get('state') == 'failed':
    state = FAILED
  elif (status.get('state', 'done') == 'done' and history and
        history[-1]['epoch'] >= num_epochs):
    state = DONE
  else:
    state = IN_PROGRESS
  message = ''
  if state == FAILED:
    message = f'{status.get("error_type")}: {status.get("message")}'
  return RunResult(
      setting=status['setting'], block=status['block'], seed=status['seed'],
      state=state, workdir=workdir, dataset=status['dataset'],
      depth=status['depth'], num_epochs=num_epochs,
      parameters=status.get('parameters'), history=history, message=message,
      weights=(config or {}).get('eval_weights', 'raw'),
      selection='validation' if (config or {}).get('data', {}).get(
          'validation_examples') else 'test')


def collect(root: str) -> list[RunResult]:
  """Every run under ``root``, in a stable order."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f'No directory {root}.')
  runs = []
  for directory, subdirs, files in os.walk(root):
    if grid.STATUS_FILE in files or 'config.json' in files:
      run = read_run(root, directory)
      if run is not None:
        runs.append(run)
      subdirs[:] = []  # Checkpoint directories hold no runs.
  return sorted(runs, key=lambda r: (r.setting, r.block, r.seed))


def _ordered(values: Sequence[Any], preferred: Sequence[Any]) -> list[Any]:
  """Unique values, those in ``preferred`` first in its order."""
  unique = list(dict.fromkeys(values))
  first = [v for v in preferred if v in unique]
  return first + [v for v in unique if v not in first]


def mean_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
  """Mean and sample standard deviation (ddof=1; None below two values)."""
  mean = statistics.fmean(values)
  return mean, (statistics.stdev(values) if len(values) > 1 else None)


@dataclasses.dataclass
class Cell:
  """The runs of one block in one setting."""
  runs: list[RunResult]

  def with_state(self, state: str) -> list[RunResult]:
    return [r for r in self.runs if r.state == state]

  @property
  def n(self) -> int:
    return len(self.with_state(DONE))

  def stats(self, value: Callable[[RunResult], float]
            ) -> Optional[tuple[float, Optional[float]]]:
    done = self.with_state(DONE)
    return mean_std([value(r) for r in done]) if done else None

  @property
  def parameters(self) -> Optional[int]:
    counts = {r.parameters for r in self.runs if r.parameters is not None}
    return counts.pop() if len(counts) == 1 else None

  @property
  def train_seconds(self) -> Optional[float]:
    done = self.with_state(DONE)
    return statistics.fmean(r.train_seconds for r in done) if done else None


@dataclasses.dataclass
class Table:
  """Runs arranged by block (rows) and setting (columns)."""
  blocks: list[str]
  settings: list[str]
  cells: dict[tuple[str, str], Cell]
  # Setting -> (dataset, depth) of its runs.
  columns: dict[str, tuple[str, int]]

  def cell(self, block: str, setting: str) -> Cell:
    return self.cells.get((block, setting), Cell([]))


def build_table(runs: Sequence[RunResult],
                axes: Optional[dict[str, list[Any]]] = None) -> Table:
  """Groups runs; ``axes`` (grid.json) gives the row and column order."""
  axes = axes or {}
  blocks = _ordered([r.block for r in runs], axes.get('blocks', []))
  settings = _ordered([r.setting for r in runs], axes.get('settings', []))
  cells, columns = {}, {}
  for run in runs:
    cells.setdefault((run.block, run.setting), Cell([])).runs.append(run)
    columns.setdefault(run.setting, (run.dataset, run.depth))
  return Table(blocks, settings, cells, columns)


def _pm(stats: Optional[tuple[float, Optional[float]]]) -> str:
  if stats is None:
    return '—'
  mean, std = stats
  return f'{mean:.2f}' if std is None else f'{mean:.2f} ± {std:.2f}'


def _millions(count: Optional[int]) -> str:
  return '?' if count is None else f'{count / 1e6:.2f}M'


def format_duration(seconds: Optional[float]) -> str:
  """'45 s', '12.5 min' or '3.2 h'."""
  if seconds is None:
    return '—'
  if seconds < 120:
    return f'{seconds:.0f} s'
  if seconds < 7200:
    return f'{seconds / 60:.1f} min'
  return f'{seconds / 3600:.1f} h'


def _unfinished(cell: Cell) -> list[str]:
  notes = []
  failed = cell.with_state(FAILED)
  if failed:
    notes.append(f'{len(failed)} failed')
  running = cell.with_state(IN_PROGRESS)
  if running:
    progress = ', '.join(r.progress.split(' ')[0] for r in running)
    notes.append(f'{len(running)} in progress ({progress} epochs)')
  return notes


def format_cell(cell: Cell) -> str:
  """A markdown cell: best, final, parameters, time, unfinished runs."""
  if not cell.runs:
    return ''
  lines = []
  if cell.n:
    lines.append(f'**{_pm(cell.stats(lambda r: r.best_accuracy))}** '
                 f'(n={cell.n})')
    lines.append(f'final {_pm(cell.stats(lambda r: r.final_accuracy))}')
    lines.append(f'{_millions(cell.parameters)} params, '
                 f'{format_duration(cell.train_seconds)}/run')
  else:
    lines.append('—')
  lines.extend(_unfinished(cell))
  return '<br>'.join(lines)


def _baseline_rows(table: Table) -> list[tuple[str, dict[str, str]]]:
  """Published figures whose dataset and depth match a column."""
  rows = {}
  for setting in table.settings:
    dataset, depth = table.columns[setting]
    for b in baselines.matching(dataset, depth):
      label = f'*published:* {b.network} ({b.source})'
      if b.note:
        label += f'; {b.note}'
      rows.setdefault(label, {})[setting] = f'{b.test_accuracy:.2f}'
  return list(rows.items())


def _other_baselines(table: Table) -> list[baselines.Baseline]:
  shown = set(table.columns.values())
  return [b for b in baselines.BASELINES
          if (b.dataset, b.depth) not in shown]


def selection_note(runs: Sequence[RunResult]) -> str:
  """Which selection the runs' best accuracies come from."""
  by_selection = {}
  for run in runs:
    by_selection.setdefault(run.selection, set()).add(run.setting)
  parts = []
  if 'test' in by_selection:
    parts.append(
        'the epoch of the highest test accuracy, i.e. selected on the test '
        'set itself (optimistic, though common in the CIFAR literature) for ' +
        ', '.join(sorted(by_selection['test'])))
  if 'validation' in by_selection:
    parts.append(
        'the epoch of the highest accuracy on the validation split held out '
        'of the training set (data.validation_examples; the test set plays '
        'no part) for ' + ', '.join(sorted(by_selection['validation'])))
  return 'Selection: ' + '; '.join(parts) + '.'


def markdown(root: str, table: Table, runs: Sequence[RunResult],
             images: Sequence[str], with_baselines: bool = False) -> str:
  """results.md."""
  def header(setting):
    dataset, depth = table.columns[setting]
    return f'{setting}<br>({dataset}, depth {depth})'

  lines = [
      f'# Results: {root}', '',
      'Best test accuracy (%) of each run: the test accuracy of the epoch '
      'whose checkpoint is kept as the best (see Selection below), as '
      'mean ± sample standard deviation (ddof=1) over the n finished seeds '
      '(no ± for n=1). Below it: the final-epoch test accuracy the same way, '
      'the parameters, and the mean training time per run (the sum of its '
      'per-epoch seconds: training and test evaluation, including the first '
      "epoch's compilation). Failed runs and runs in progress are counted "
      'separately and not in the statistics.', '', selection_note(runs), '']
  averaged = sorted({f'{r.setting} ({r.weights})' for r in runs
                     if r.weights != 'raw'})
  if averaged:
    lines += ['Judged by averaged weights (their eval_weights), so these '
              'accuracies are of the average: ' + ', '.join(averaged) + '.',
              '']
  lines += [
      '| block | ' + ' | '.join(header(s) for s in table.settings) + ' |',
      '|---|' + '---|' * len(table.settings)]
  for block in table.blocks:
    cells = [format_cell(table.cell(block, s)) for s in table.settings]
    lines.append(f'| {block} | ' + ' | '.join(cells) + ' |')
  if with_baselines:
    for label, values in _baseline_rows(table):
      cells = [values.get(s, '') for s in table.settings]
      lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  lines.append('')
  for image in images:
    lines += [f'![{image}]({image})', '']
  lines.append('Curves: the mean over seeds, with a band from the lowest to '
               'the highest seed at each epoch (over the runs that reached '
               'it, finished or not).')
  failed = [r for r in runs if r.state == FAILED]
  if failed:
    lines += ['', '## Failed runs', '']
    lines += [f'- {r.setting} {r.block} seed{r.seed} '
              f'(`{os.path.relpath(r.workdir, root)}`, after {r.progress}): '
              f'{r.message.splitlines()[0] if r.message else ""}'
              for r in failed]
  running = [r for r in runs if r.state == IN_PROGRESS]
  if running:
    lines += ['', '## In progress', '']
    lines += [f'- {r.setting} {r.block} seed{r.seed} '
              f'(`{os.path.relpath(r.workdir, root)}`): {r.progress}'
              for r in running]
  if with_baselines:
    lines += ['', '## Published figures', '',
              'Test accuracy = 100 − the test error the paper prints. ' +
              baselines.CAVEAT]
    others = _other_baselines(table)
    if others:
      lines += ['', 'Not matching a column above (dataset and depth):', '']
      lines += [f'- {b.network}, {b.dataset}: {b.test_accuracy:.2f} '
                f'({b.source}{"; " + b.note if b.note else ""})'
                for b in others]
    lines += ['', 'References:', '']
    lines += [f'- {key}: {title}' for key, title in baselines.PAPERS.items()]
  return '\n'.join(lines) + '\n'


CSV_FIELDS = ('best_mean', 'best_std', 'n', 'final_mean', 'final_std',
              'parameters', 'train_seconds_mean', 'failed', 'in_progress')


def _number(value: Optional[float], digits: int = 4) -> str:
  return '' if value is None else f'{value:.{digits}f}'


def csv_rows(table: Table, with_baselines: bool = False
             ) -> list[dict[str, str]]:
  """results.csv rows: one per block, CSV_FIELDS per setting."""
  rows = []
  for block in table.blocks:
    row = {'kind': 'measured', 'block': block, 'source': ''}
    for setting in table.settings:
      cell = table.cell(block, setting)
      best = cell.stats(lambda r: r.best_accuracy) or (None, None)
      final = cell.stats(lambda r: r.final_accuracy) or (None, None)
      values = {
          'best_mean': _number(best[0]), 'best_std': _number(best[1]),
          'n': str(cell.n), 'final_mean': _number(final[0]),
          'final_std': _number(final[1]),
          'parameters': '' if cell.parameters is None else str(
              cell.parameters),
          'train_seconds_mean': _number(cell.train_seconds, 1),
          'failed': str(len(cell.with_state(FAILED))),
          'in_progress': str(len(cell.with_state(IN_PROGRESS))),
      }
      row.update({f'{setting}/{k}': v for k, v in values.items()})
    rows.append(row)
  if with_baselines:
    for setting in table.settings:
      for b in baselines.matching(*table.columns[setting]):
        rows.append({'kind': 'published', 'block': b.network,
                     'source': b.source,
                     f'{setting}/best_mean': f'{b.test_accuracy:.2f}'})
  return rows


def write_csv(path: str, rows: Sequence[dict[str, str]],
              fields: Sequence[str]) -> None:
  """Writes rows with the given columns (missing values empty)."""
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(fields), restval='')
    writer.writeheader()
    writer.writerows(rows)


def run_rows(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
  """runs.csv rows: one per run."""
  return [{'setting': r.setting, 'block': r.block, 'seed': r.seed,
           'state': r.state, 'dataset': r.dataset, 'depth': r.depth,
           'epochs': len(r.history), 'num_epochs': r.num_epochs,
           'best_test_accuracy': _number(r.best_accuracy),
           'final_test_accuracy': _number(r.final_accuracy),
           'parameters': r.parameters or '',
           'train_seconds': _number(r.train_seconds, 1),
           'message': r.message.splitlines()[0] if r.message else '',
           'workdir': r.workdir} for r in runs]


def seed_band(runs: Sequence[RunResult], metric: str
              ) -> tuple[list[int], list[float], list[float], list[float]]:
  """Epochs, and the mean, min and max of a metric over the runs there."""
  value = METRICS[metric][1]
  by_epoch = {}
  for run in runs:
    for record in run.history:
      by_epoch.setdefault(record['epoch'], []).append(value(record))
  epochs = sorted(by_epoch)
  return (epochs, [statistics.fmean(by_epoch[e]) for e in epochs],
          [min(by_epoch[e]) for e in epochs],
          [max(by_epoch[e]) for e in epochs])


def plot_curves(path: str, table: Table, metric: str,
                layout: str = 'by_setting') -> None:
  """Learning curves of every block: one panel per setting, or one panel."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  if metric not in METRICS:
    raise ValueError(f'Unknown metric {metric!r}; valid: '
                     f'{", ".join(METRICS)}.')
  if layout not in LAYOUTS:
    raise ValueError(f'Unknown layout {layout!r}; valid: '
                     f'{", ".join(LAYOUTS)}.')
  label, _ = METRICS[metric]
  panels = table.settings if layout == 'by_setting' else [None]
  cols = min(len(panels), 3)
  rows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows),
                           squeeze=False)
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  styles = ('-', '--', ':', '-.')
  for ax, setting in zip(axes.flat, panels):
    for b, block in enumerate(table.blocks):
      for s, column in enumerate(table.settings):
        if setting is not None and column != setting:
          continue
        runs = [r for r in table.cell(block, column).runs if r.history]
        if not runs:
          continue
        epochs, mean, low, high = seed_band(runs, metric)
        if setting is None:
          dataset, depth = table.columns[column]
          name = f'{block}-{depth} ({dataset})'
          color = colors[s % len(colors)]
          style = styles[b % len(styles)]
        else:
          name, color, style = block, colors[b % len(colors)], '-'
        ax.plot(epochs, mean, style, color=color,
                marker='.' if len(epochs) < 30 else None,
                label=f'{name} ({len(runs)} run{"s" * (len(runs) > 1)})')
        if len(runs) > 1:
          ax.fill_between(epochs, low, high, color=color, alpha=0.2,
                          linewidth=0)
    ax.set_title(setting or f'{label} by block and setting')
    ax.set_xlabel('epoch')
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    if ax.has_data():
      ax.legend(fontsize='small')
  for ax in axes.flat[len(panels):]:
    ax.set_visible(False)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def comparison(table: Table, runs: Sequence[RunResult], reference: str
               ) -> str:
  """comparison.md: every cell against a block or a setting
  (significance.py), over the finished seeds."""
  cells = {key: [(r.best_accuracy, r.final_accuracy)
                 for r in cell.with_state(DONE)]
           for key, cell in table.cells.items()}
  kind, rows = significance.compare(cells, table.blocks, table.settings,
                                    reference)
  return significance.markdown(kind, reference, rows, selection_note(runs))


def write_report(root: str, metrics: Sequence[str] = ('test_accuracy',),
                 layout: str = 'by_setting',
                 with_baselines: bool = False,
                 compare: Optional[str] = None) -> dict[str, str]:
  """Writes results.md, results.csv, runs.csv and the curve PNGs.

  Args:
    root: the grid's root directory.
    metrics: the curves to draw (keys of METRICS).
    layout: 'by_setting' (a panel per setting) or 'single' (one panel).
    with_baselines: add the published figures of baselines.py.
    compare: a block or setting to compare every cell with
      (comparison.md), or None.

  Returns:
    The written files by kind ('markdown', 'csv', 'runs', 'comparison', and
    each metric).
  """
  for metric in metrics:
    if metric not in METRICS:
      raise ValueError(f'Unknown metric {metric!r}; valid: '
                       f'{", ".join(METRICS)}.')
  runs = collect(root)
  if not runs:
    raise FileNotFoundError(f'No runs under {root}.')
  axes = _read_json(os.path.join(root, grid.GRID_FILE))
  table = build_table(runs, axes)
  written = {}
  if compare:
    # First: an unknown name stops the report before it writes anything.
    compared = comparison(table, runs, compare)
    written['comparison'] = os.path.join(root, 'comparison.md')
    with open(written['comparison'], 'w') as f:
      f.write(compared)
  images = []
  for metric in metrics:
    image = f'curves_{metric}.png'
    plot_curves(os.path.join(root, image), table, metric, layout)
    written[metric] = os.path.join(root, image)
    images.append(image)
  written['markdown'] = os.path.join(root, 'results.md')
  with open(written['markdown'], 'w') as f:
    f.write(markdown(root, table, runs, images, with_baselines))
  fields = ['kind', 'block', 'source'] + [
      f'{s}/{k}' for s in table.settings for k in CSV_FIELDS]
  written['csv'] = os.path.join(root, 'results.csv')
  write_csv(written['csv'], csv_rows(table, with_baselines), fields)
  rows = run_rows(runs)
  written['runs'] = os.path.join(root, 'runs.csv')
  write_csv(written['runs'], rows, list(rows[0]))
  return written


def define_flags() -> None:
  """Defines the command-line flags of the report command."""
  flags.DEFINE_bool('baselines', False, 'Show published figures '
                    '(jax_resnet/tools/baselines.py) beside the measured rows.')
  flags.DEFINE_list('metric', ['test_accuracy'], 'Curves to draw: '
                    f'{", ".join(METRICS)}.')
  flags.DEFINE_enum('layout', 'by_setting', list(LAYOUTS),
                    'by_setting: a panel per setting; single: one panel.')
  flags.DEFINE_string('compare', None, 'A block (or setting): compare every '
                      'other block in each setting (every other setting for '
                      "each block) with it: difference of means, 95% CI, "
                      "Welch's t-test p-value, into comparison.md.")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError('Usage: python -m jax_resnet.tools.report ROOT '
                         '[--baselines] [--metric M] [--layout L] '
                         '[--compare BLOCK]')
  args = flags.FLAGS
  try:
    written = write_report(argv[1], args.metric, args.layout, args.baselines,
                           args.compare)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if 'comparison' in written:
    with open(written['comparison']) as f:
      print(f.read())
  for path in written.values():
    print(path)


if __name__ == '__main__':
  define_flags()
  app.run(main)
