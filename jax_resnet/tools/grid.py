"""A grid of ordinary training runs: every (block, setting, seed), resumable.

  python -m jax_resnet.tools.grid \
      --blocks basic,preact,gated,stochastic_depth,custom \
      --settings resnet20-cifar10,resnet56-cifar100,resnet110-cifar100 \
      --seeds 0,1,2 --root runs/grid

A setting names a config file (``resnet56-cifar100`` is
configs/resnet56_cifar100.py, ``recipes/resnet20-cifar10-cutout`` is
configs/recipes/resnet20_cifar10_cutout.py). A run is that config with ``model.block`` and
``seed`` set, plus the grid's ``--epochs`` and ``--config.FIELD=VALUE``
overrides, trained by ``train.train_and_evaluate`` in
``<root>/<setting>/<block>/seed<k>``. Without --blocks each setting trains its
own config's block.

Each workdir gets ``status.json``: the run's state (running, done, failed or
interrupted), its parameter count, and for a failure the error. The same
command again skips finished runs, resumes interrupted ones from their
checkpoint, and leaves failed ones alone unless --retry-failed. A workdir
started with other settings (another ``--epochs``, say) is reported as a
conflict and left untouched. A run whose workdir another command holds
(``workdir_lock``: another grid, a ``main.py`` on the same root) is skipped.
``--dry-run`` lists every run and its state.

Runs are ordered seed by seed (all settings and blocks of seed 0 first), so a
partial grid already gives a complete table for one seed. ``--shard i/k``
(0 <= i < k) takes runs i, i+k, i+2k, ... of that order: k machines given the
same grid flags and one shared root each write only their own workdirs.
``<root>/grid.json`` records the grid's axes for the report.

Several hosts: the grid command on every host with main.py's multi-host
flags (``--distributed=auto``, or ``--coordinator_address``,
``--num_processes``, ``--process_id``; jax_resnet/distributed.py). The grid
then trains one multi-host run at a time, every process taking part.
Process 0 reads the workdirs and decides what to run; the others follow its
decisions. Only process 0 prints and writes status.json and grid.json. A
lost process ends the grid on every host (the runs' status says running;
the same commands resume them).
"""

import dataclasses
import datetime
import json
import os
import socket
import sys
import traceback
from typing import Any, Callable, Optional, Sequence

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from jax_resnet import config_overrides
from jax_resnet import distributed
from jax_resnet import errors
from jax_resnet import exits
from jax_resnet import metric_logging
from jax_resnet import preemption
from jax_resnet import runtime
from jax_resnet import workdir_lock

STATUS_FILE = 'status.json'
GRID_FILE = 'grid.json'
# The grid sets these per run; overriding them for all runs makes no sense.
GRID_FIELDS = {'seed': '--seeds', 'model.block': '--blocks'}
# Fields that may differ when a run is resumed (another machine's data path,
# logging): they do not change what is trained.
RESUMABLE_DIFFERENCES = ('data_dir', 'data.download', 'log_every_steps',
                         'steps_per_dispatch', 'checkpoint_every_steps',
                         'checkpoints_to_keep', 'eval_checkpoint')


def define_flags() -> None:
  """Defines the command-line flags of the grid command."""
  # Called by the entry point only: other commands define --config too, and
  # a process (the tests) may import several of them.
  flags.DEFINE_list('blocks', [], 'Blocks (registry names or module:Class); '
                    "default: each setting's own config block.")
  flags.DEFINE_list('settings', None, 'Settings: config file names with - '
                    'for _, e.g. resnet20-cifar10 for '
                    'configs/resnet20_cifar10.py.')
  flags.DEFINE_list('seeds', ['0'], 'Seeds, e.g. 0,1,2.')
  flags.DEFINE_string('root', os.path.join('runs', 'grid'),
                      'Root directory of the grid.')
  flags.DEFINE_integer('epochs', None, "num_epochs of every run (default: "
                       "the setting's).")
  flags.DEFINE_string('shard', '0/1', 'i/k: run only runs i, i+k, i+2k, ... '
                      'of the grid (0 <= i < k).')
  flags.DEFINE_bool('dry-run', False,
                    'List the runs and their states; train nothing.')
  flags.DEFINE_bool('pack-seeds', False,
                    'Train the seeds of each (setting, block) together as '
                    'one vmapped program (train.train_seeds); each seed '
                    'still writes its own workdir.')
  flags.DEFINE_bool('retry-failed', False, 'Run failed runs again (they '
                    'resume from their last checkpoint).')
  distributed.define_flags()
  # Typed parsing of --config.FIELD=VALUE by ml_collections, against the
  # defaults that every setting's config starts from.
  config_overrides.define_config_dict(
      config_overrides.default_config(),
      'Overrides for every run, e.g. --config.data_dir=DIR.')


@dataclasses.dataclass
class Run:
  """One training run of the grid."""
  index: int
  setting: str
  block: str
  seed: int
  workdir: str
  config: ml_collections.ConfigDict
  # The resolved network (train.validated_model), once validated.
  model: Any = None

  @property
  def name(self) -> str:
    return f'{self.setting} {self.block} seed{self.seed}'


@dataclasses.dataclass
class RunState:
  """What a workdir says about its run."""
  state: str  # pending, running, interrupted, done, failed or conflict.
  detail: str = ''
  epochs: int = 0
  # Interrupted with a status that still says running: whom it names.
  stale_claim: str = ''


def setting_config_path(setting: str) -> str:
  """configs/<setting with - as _>.py; ``recipes/resnet20-cifar10-ema`` is
  configs/recipes/resnet20_cifar10_ema.py."""
  return os.path.join(config_overrides.CONFIG_DIR,
                      *setting.replace('-', '_').split('/')) + '.py'


def setting_names() -> list[str]:
  """Every setting: the config files under configs/ (but default.py)."""
  names = []
  for directory, _, files in os.walk(config_overrides.CONFIG_DIR):
    prefix = os.path.relpath(directory, config_overrides.CONFIG_DIR)
    for f in files:
      if f.endswith('.py') and f not in ('__init__.py', 'default.py'):
        name = f[:-3].replace('_', '-')
        names.append(name if prefix == '.' else f'{prefix}/{name}')
  return sorted(names)


def load_setting(setting: str) -> ml_collections.ConfigDict:
  """The config of a setting name; unknown names list the config files."""
  path = setting_config_path(setting)
  if not os.path.exists(path):
    raise errors.ConfigError(f'Unknown setting {setting!r} (no {path}); '
                             f'valid settings: {", ".join(setting_names())}.')
  return config_overrides.load_config_file(path)


def _path_part(name: str) -> str:
  # module:Class blocks become directory names too.
  return name.replace(':', '.').replace(os.sep, '_')


def plan_runs(settings: Sequence[str], blocks: Sequence[str],
              seeds: Sequence[int], root: str,
              overrides: Optional[dict[str, Any]] = None) -> list[Run]:
  """Every run of the grid in its fixed order: seed, then setting, then block.

  Args:
    settings: setting names (config files, see ``load_setting``).
    blocks: block names; empty = each setting's own block.
    seeds: seeds.
    root: the grid's root directory.
    overrides: flat ``{'num_epochs': 2, 'data.train_examples': 512}`` set in
      every run's config.

  Returns:
    The runs, with their configs and workdirs.

  Raises:
    errors.ConfigError: an unknown setting or field, a duplicate, or an override of
      a field the grid sets itself.
  """
  overrides = dict(overrides or {})
  for field, flag in GRID_FIELDS.items():
    if field in overrides:
      raise errors.ConfigError(f'--config.{field} would be the same for '
                               f'every run; use {flag}.')
  for axis, values in (('settings', settings), ('blocks', blocks),
                       ('seeds', seeds)):
    if len(set(values)) != len(values):
      raise errors.ConfigError(
          f'--{axis} lists a value twice: {list(values)}.')
  if not settings or not seeds:
    raise errors.ConfigError(
        'A grid needs at least one setting and one seed.')
  bases = {s: config_overrides.apply(load_setting(s), overrides)
           for s in settings}
  runs = []
  for seed in seeds:
    for setting in settings:
      base = bases[setting]
      for block in blocks or [base.model.block]:
        config = config_overrides.apply(base, {'model.block': block,
                                               'seed': seed})
        workdir = os.path.join(root, setting, _path_part(block), f'seed{seed}')
        runs.append(Run(len(runs), setting, block, seed, workdir, config))
  return runs


def parse_shard(text: str) -> tuple[int, int]:
  """'i/k' -> (i, k), with 0 <= i < k."""
  try:
    index, count = (int(part) for part in text.split('/'))
  except ValueError:
    index, count = -1, 0
  if not 0 <= index < count:
    raise errors.ConfigError(
        f'--shard must be i/k with 0 <= i < k, e.g. 0/4; got {text!r}.')
  return index, count


def shard_runs(runs: Sequence[Run], index: int, count: int) -> list[Run]:
  """Runs index, index + count, ... of the grid's order."""
  return list(runs[index::count])


def _now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


def read_status(workdir: str) -> Optional[dict[str, Any]]:
  """A workdir's status.json, or None."""
  path = os.path.join(workdir, STATUS_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_status(workdir: str, status: dict[str, Any]) -> None:
  """Replaces status.json atomically: a reader never sees half a file.
  Process 0 of a multi-host grid writes; the others do nothing."""
  if not distributed.is_primary():
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, STATUS_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(status, f, indent=2)
  os.replace(path + '.tmp', path)


def _flat_config(config: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(_flat_config(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def config_differences(run: Run) -> list[str]:
  """How the workdir's config.json differs from the run's config."""
  path = os.path.join(run.workdir, 'config.json')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    saved = _flat_config(json.load(f))
  current = _flat_config(json.loads(run.config.to_json()))
  # A field added to the project after the workdir was written, at its
  # default, trains what the workdir's code trained: no difference.
  defaults = _flat_config(json.loads(
      config_overrides.default_config().to_json()))
  for key, value in current.items():
    if key not in saved and key in defaults and defaults[key] == value:
      saved[key] = value
  return [f'{k}: workdir {saved.get(k)!r}, grid {current.get(k)!r}'
          for k in sorted(set(saved) | set(current))
          if k not in RESUMABLE_DIFFERENCES and saved.get(k) != current.get(k)]


def run_state(run: Run) -> RunState:
  """The state of a run from its workdir (status.json, metrics, config)."""
  status = read_status(run.workdir)
  epochs = len(metric_logging.read_metrics(run.workdir))
  num_epochs = run.config.num_epochs
  progress = f'{epochs}/{num_epochs} epochs'
  differences = config_differences(run)
  if differences:
    return RunState('conflict', 'the workdir was started with other '
                    f'settings ({"; ".join(differences)}); use another '
                    '--root or the grid that started it', epochs)
  if status is None:
    if epochs:
      return RunState('interrupted', f'{progress}, no status file', epochs)
    return RunState('pending', '', 0)
  state = status.get('state')
  if state == 'done' and epochs >= num_epochs:
    best = status.get('selected_test_accuracy',
                      status.get('best_test_accuracy'))
    best = f', best {best:.2f}%' if best is not None else ''
    return RunState('done', progress + best, epochs)
  if state == 'failed':
    # The first line: a listing shows one line per run; status.json has all.
    message = (str(status.get('message')).splitlines() or [''])[0]
    return RunState('failed', f'{status.get("error_type")}: {message}',
                    epochs)
  if state == 'running':
    where = f'host {status.get("host")}, pid {status.get("pid")}'
    # The workdir's lock says whether that process still trains it (on any
    # host that shares the file system); status.json cannot.
    if workdir_lock.holder(run.workdir) is None:
      return RunState('interrupted', f'{progress}; status says running '
                      f'({where}), but no process holds the workdir', epochs,
                      stale_claim=where)
    return RunState('running', f'{progress} ({where}, since '
                    f'{status.get("started")})', epochs)
  return RunState('interrupted', progress, epochs)


def count_parameters(module: Any) -> int:
  """Parameters of a network (shapes only, nothing computed)."""
  from jax_resnet.tools import summary  # pylint: disable=g-import-not-at-top
  return summary.count_params(summary.abstract_variables(module)['params'])


def _base_status(run: Run) -> dict[str, Any]:
  return {'setting': run.setting, 'block': run.block, 'seed': run.seed,
          'dataset': run.config.dataset, 'depth': run.config.model.depth,
          'network': run.config.model.get('name', 'cifar_resnet'),
          'num_epochs': run.config.num_epochs}


def execute(run: Run, train_fn: Optional[Callable[..., Any]] = None) -> bool:
  """Trains one run (resuming its checkpoint) and records its status.

  Args:
    run: the run.
    train_fn: ``(config, workdir, model) -> final record``, ``model`` the
      resolved network; default ``train.train_and_evaluate``.

  Returns:
    True if it finished, False if it failed (the error is in status.json).
  """
  from jax_resnet import train  # pylint: disable=g-import-not-at-top
  train_fn = train_fn or train.train_and_evaluate

  def train_one(model):
    return {run.seed: train_fn(run.config, run.workdir, model)}

  return execute_group([run], train_one)


def execute_packed(runs: Sequence[Run]) -> bool:
  """Trains the seeds of one (setting, block) together
  (``train.train_seeds``), resuming as a group; records each run's status.
  Returns True if they finished."""
  from jax_resnet import train  # pylint: disable=g-import-not-at-top
  return execute_group(runs, lambda model: train.train_seeds(
      runs[0].config, {run.seed: run.workdir for run in runs}, model))


def execute_group(runs: Sequence[Run],
                  train_group: Callable[[Any], dict[int, Any]]) -> bool:
  """Runs ``train_group(model) -> {seed: final record}`` for runs that
  differ in their seed only, with their status.json files kept: running,
  then done, failed (the error) or interrupted."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax_resnet import train  # pylint: disable=g-import-not-at-top
  statuses = {}
  for run in runs:
    statuses[run.seed] = {**_base_status(run), 'state': 'running',
                          'host': socket.gethostname(), 'pid': os.getpid(),
                          'started': _now()}
  try:
    model = runs[0].model or train.validated_model(runs[0].config)
    for run in runs:
      statuses[run.seed]['parameters'] = count_parameters(model.module)
      write_status(run.workdir, statuses[run.seed])
    finals = train_group(model)
  except (KeyboardInterrupt, preemption.Stopped):
    for run in runs:
      statuses[run.seed].update(state='interrupted', stopped=_now())
      write_status(run.workdir, statuses[run.seed])
    raise
  except Exception as e:  # pylint: disable=broad-except
    if (isinstance(e, jax.errors.JaxRuntimeError) and
        distributed.is_multi_process()):
      # A lost process: the other processes cannot go on with this run or
      # the next; the same commands resume it.
      raise
    # Any error ends these runs only; the grid goes on with the next ones.
    for run in runs:
      statuses[run.seed].update(
          state='failed', error_type=type(e).__name__, message=str(e),
          traceback=traceback.format_exc(), finished=_now(),
          epochs=len(metric_logging.read_metrics(run.workdir)))
      write_status(run.workdir, statuses[run.seed])
    return False
  finally:
    # Each run compiles its own steps; drop them so a long grid's memory
    # stays that of one run.
    jax.clear_caches()
  for run in runs:
    final = finals[run.seed]
    statuses[run.seed].update(
        state='done', finished=_now(), epochs=final['epoch'],
        best_test_accuracy=final['best_test_accuracy'],
        selected_test_accuracy=final.get('selected_test_accuracy'),
        final_test_accuracy=final['test_accuracy'])
    write_status(run.workdir, statuses[run.seed])
  return True


@dataclasses.dataclass
class Outcome:
  """What a grid invocation did."""
  finished: list[Run] = dataclasses.field(default_factory=list)
  already_done: list[Run] = dataclasses.field(default_factory=list)
  failed: list[tuple[Run, str]] = dataclasses.field(default_factory=list)
  elsewhere: list[Run] = dataclasses.field(default_factory=list)


def run_grid(runs: Sequence[Run], retry_failed: bool = False,
             train_fn: Optional[Callable[..., Any]] = None,
             pack_seeds: bool = False) -> Outcome:
  """Runs what is not done yet; a failing run does not stop the others.

  ``pack_seeds``: the runs to do of each (setting, block) train together
  (``execute_packed``), after the last of them in the grid's order comes
  up.
  """
  outcome = Outcome()
  # The workdir locks process 0 holds, of the runs decided and not done.
  locks = {}
  try:
    _run_grid(runs, retry_failed, train_fn, pack_seeds, outcome, locks)
  finally:
    for lock in locks.values():
      lock.release()
  return outcome


def _run_grid(runs: Sequence[Run], retry_failed: bool,
              train_fn: Optional[Callable[..., Any]], pack_seeds: bool,
              outcome: Outcome,
              locks: dict[str, workdir_lock.WorkdirLock]) -> None:
  """run_grid's loop; ``locks``: see _decide."""

  def done_with(group):
    for run in group:
      if run.workdir in locks:
        locks.pop(run.workdir).release()

  todo = []
  for position, run in enumerate(runs, start=1):
    # Process 0's reading of the workdirs, followed by every process.
    action, line, detail = distributed.from_primary(
        lambda: _decide(run, f'[{position}/{len(runs)}]', retry_failed,
                        pack_seeds, locks))
    distributed.say(line)
    if action == 'done':
      outcome.already_done.append(run)
      continue
    if action == 'skip':
      outcome.failed.append((run, detail))
      continue
    if action == 'elsewhere':
      outcome.elsewhere.append(run)
      continue
    todo.append(run)
    if pack_seeds:
      continue
    finished = execute(run, train_fn)
    done_with([run])
    if finished:
      outcome.finished.append(run)
    else:
      _failed(run, outcome)
  if pack_seeds:
    groups = {}
    for run in todo:
      groups.setdefault((run.setting, run.block), []).append(run)
    for (setting, block), group in groups.items():
      seeds = ','.join(str(run.seed) for run in group)
      distributed.say(f'{setting} {block}: seeds {seeds} packed.')
      finished = execute_packed(group)
      done_with(group)
      if finished:
        outcome.finished.extend(group)
      else:
        for run in group:
          _failed(run, outcome)


def _decide(run: Run, position: str, retry_failed: bool, pack_seeds: bool,
            locks: dict[str, workdir_lock.WorkdirLock]
            ) -> tuple[str, str, str]:
  """What to do with a run, from its workdir: ``(action, line, detail)``,
  the action one of done, skip (failed or conflict), elsewhere (another
  process holds the workdir) and train; the line says it. For train, the
  workdir's lock is taken and put in ``locks``."""
  state = run_state(run)
  header = f'{position} {run.name} ({run.workdir})'
  if state.state == 'done':
    return 'done', f'{header}: done, skipped.', ''
  if state.state == 'conflict' or (state.state == 'failed' and
                                   not retry_failed):
    return ('skip', f'{header}: {state.state}, skipped: {state.detail}',
            state.detail)
  try:
    locks[run.workdir] = workdir_lock.WorkdirLock(
        run.workdir, workdir_lock.command_name()).acquire()
  except workdir_lock.WorkdirLocked as e:
    return ('elsewhere', f'{header}: in use by '
            f'{workdir_lock.describe(e.holder)}, skipped.', '')
  line = f'{header}: {"resuming" if state.epochs else "starting"}'
  if state.stale_claim:
    # Its status is from a run that died without a word (killed, or on a
    # machine that went down): the lock was free.
    line = (f'{header}: status says running ({state.stale_claim}), but no '
            'process held the workdir; taking it over.\n' + line)
  line += ' (packed with its other seeds).' if pack_seeds else '.'
  return 'train', line, ''


def _failed(run: Run, outcome: Outcome) -> None:
  detail = distributed.from_primary(lambda: run_state(run).detail)
  distributed.say(f'{run.name} ({run.workdir}): FAILED: {detail}')
  outcome.failed.append((run, detail))


def format_plan(runs: Sequence[Run], total: int, shard: tuple[int, int]
                ) -> str:
  """The dry-run listing: every run of the shard and its state."""
  states = [run_state(run) for run in runs]
  width = max([len(r.setting) for r in runs] + [7])
  block_width = max([len(r.block) for r in runs] + [5])
  lines = [f'{total} runs in the grid; shard {shard[0]}/{shard[1]} has '
           f'{len(runs)}.',
           f'{"#":>4}  {"setting":<{width}}  {"block":<{block_width}}  seed  '
           f'{"state":<11}  detail']
  for run, state in zip(runs, states):
    lines.append(f'{run.index:>4}  {run.setting:<{width}}  '
                 f'{run.block:<{block_width}}  {run.seed:>4}  '
                 f'{state.state:<11}  {state.detail}'.rstrip())
  counts = {}
  for state in states:
    counts[state.state] = counts.get(state.state, 0) + 1
  would_run = counts.get('pending', 0) + counts.get('interrupted', 0)
  lines.append(
      f'Would run {would_run} (pending {counts.get("pending", 0)}, '
      f'interrupted {counts.get("interrupted", 0)}); done '
      f'{counts.get("done", 0)}; failed {counts.get("failed", 0)} '
      '(--retry-failed reruns them); running '
      f'{counts.get("running", 0)}; conflict {counts.get("conflict", 0)}.')
  return '\n'.join(lines)


def record_grid(root: str, runs: Sequence[Run]) -> None:
  """Adds the grid's axes to <root>/grid.json (the report's row order);
  process 0 of a multi-host grid only."""
  if not distributed.is_primary():
    return
  path = os.path.join(root, GRID_FILE)
  grid = {'settings': [], 'blocks': [], 'seeds': []}
  if os.path.exists(path):
    with open(path) as f:
      grid.update(json.load(f))
  for run in runs:
    for axis, value in (('settings', run.setting), ('blocks', run.block),
                        ('seeds', run.seed)):
      if value not in grid[axis]:
        grid[axis].append(value)
  os.makedirs(root, exist_ok=True)
  with open(path + f'.{os.getpid()}.tmp', 'w') as f:
    json.dump(grid, f, indent=2)
  os.replace(path + f'.{os.getpid()}.tmp', path)


def main(argv):
  # First, as main.py: a signal while JAX is imported ends the grid cleanly.
  preemption.install()
  runtime.start_command(argv, flags.FLAGS.config.model)
  from jax_resnet import train  # pylint: disable=g-import-not-at-top

  args = flags.FLAGS
  overrides = dict(config_flags.get_override_values(args['config']))
  try:
    distributed.initialize_from_flags()
    if not args.settings:
      raise errors.ConfigError('--settings is required, e.g. '
                               '--settings resnet20-cifar10.')
    if args.epochs is not None:
      if overrides.get('num_epochs', args.epochs) != args.epochs:
        raise errors.ConfigError('--epochs and --config.num_epochs disagree.')
      overrides['num_epochs'] = args.epochs
    try:
      seeds = [int(s) for s in args.seeds]
    except ValueError:
      raise errors.ConfigError(
          f'--seeds must be integers; got {args.seeds}.') from None
    shard = parse_shard(args.shard)
    runs = plan_runs(args.settings, args.blocks, seeds, args.root, overrides)
    # Stop on a typo before hours of training, not when its run comes up;
    # each run keeps its resolved network.
    for run in runs:
      run.model = train.validated_model(run.config)
  except errors.Error as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(exits.COMMAND_LINE)

  mine = shard_runs(runs, *shard)
  if args['dry-run'].value:
    distributed.say(format_plan(mine, len(runs), shard))
    return
  record_grid(args.root, runs)
  with exits.reported(args.root):
    # A signal's stop: the run in progress saved where it stopped, and the
    # same grid command resumes it.
    outcome = run_grid(mine, retry_failed=args['retry-failed'].value,
                       pack_seeds=args['pack-seeds'].value)
    distributed.say(
        f'Grid shard {shard[0]}/{shard[1]}: {len(outcome.finished)} finished '
        f'now, {len(outcome.already_done)} already done, '
        f'{len(outcome.failed)} failed, {len(outcome.elsewhere)} running '
        'elsewhere.')
    for run, detail in outcome.failed:
      distributed.say(f'  failed: {run.name} ({run.workdir}): {detail}')
    if outcome.failed:
      sys.exit(exits.ERROR)

if __name__ == '__main__':
  runtime.restart_with_process_settings()
  # Before the flags: ml_collections reads the overrides when --config is
  # defined, and its error for an unknown field is a traceback.
  config_overrides.exit_on_unknown_fields(
      sys.argv, config_overrides.default_config())
  define_flags()
  app.run(main)
