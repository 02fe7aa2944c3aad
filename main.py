"""Train, evaluate or summarise a CIFAR ResNet.

  python main.py --config configs/resnet56_cifar100.py                # train
  python main.py --config configs/resnet56_cifar100.py --mode eval    # evaluate
  python main.py --config configs/resnet110_cifar100.py --mode summary

Several hosts: the same command on each, with --distributed=auto (TPU pod
slices, SLURM) or --coordinator_address HOST:PORT --num_processes N
--process_id I (jax_resnet/distributed.py).
"""

import contextlib
import json
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from jax_resnet import config_overrides
from jax_resnet import distributed
from jax_resnet import exits
from jax_resnet import preemption
from jax_resnet import runtime
from jax_resnet import workdir_lock

_CONFIG = config_overrides.define_config_file(
    'Config file, e.g. configs/resnet20_cifar10.py.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Run directory; default runs/<config file name>.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'summary'],
                          'train (resumes if the workdir has a checkpoint), '
                          'eval (restore and evaluate) or summary.')
distributed.define_flags()
flags.mark_flags_as_required(['config'])


def main(argv):
  # First: from here on a SIGTERM or SIGINT ends the command with its own
  # status (preemption), also while JAX is imported.
  preemption.install()
  runtime.start_command(argv, _CONFIG.value.model)
  # Imported after the platform settings, which must precede JAX's backend.
  # pylint: disable=g-import-not-at-top
  from jax_resnet import train
  from jax_resnet.tools import summary
  # pylint: enable=g-import-not-at-top

  config = _CONFIG.value
  config_name = os.path.splitext(os.path.basename(
      config_flags.get_config_filename(flags.FLAGS['config'])))[0]
  workdir = _WORKDIR.value or os.path.join('runs', config_name)
  with exits.reported(workdir):
    distributed.initialize_from_flags()
    model = train.validated_model(config)
    if _MODE.value == 'summary':
      distributed.say(summary.summarize(config, model))
    elif _MODE.value == 'eval':
      trainer = workdir_lock.holder(workdir)
      if trainer is not None and distributed.is_primary():
        # Eval only reads: it may run beside the training.
        print(f'{workdir} is in use by process {trainer.get("pid")} on '
              f'host {trainer.get("host")}; evaluating its checkpoints as '
              'they are now.')
      result = train.evaluate(config, workdir, model)
      distributed.say(
          f'test loss {result["test_loss"]:.4f}, test accuracy '
          f'{result["test_accuracy"]:.2f}% ({config.eval_checkpoint} '
          f'checkpoint, {result["weights"]} weights, epoch '
          f'{result["checkpoint_epoch"]}, step {result["checkpoint_step"]})')
      distributed.say(json.dumps(
          {k: result[k] for k in
           ('test_accuracy', 'test_loss', 'checkpoint_step')}))
    else:
      with contextlib.ExitStack() as locks:
        # Process 0 holds the locks of a multi-host run.
        if distributed.is_primary():
          for path in train.run_workdirs(config, workdir).values():
            locks.enter_context(workdir_lock.WorkdirLock(
                path, workdir_lock.command_name()))
        train.train_and_evaluate(config, workdir, model)


if __name__ == '__main__':
  runtime.restart_with_process_settings()
  config_overrides.check_command_line(sys.argv)
  app.run(main)
