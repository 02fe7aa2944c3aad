"""Default configuration: CIFAR-10 ResNet-20, the benchmark's training protocol.

Every field is documented here; the experiment configs import this one and
override only what differs. Any field can be overridden on the command line:

  python main.py --config configs/default.py --config.model.block=preact
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  """Returns the default configuration."""
  config = ml_collections.ConfigDict()

  # Dataset: 'cifar10' or 'cifar100' (fine labels), read with TFDS.
  config.dataset = 'cifar10'
  # TFDS data directory; '' uses TFDS's own (TFDS_DATA_DIR or
  # ~/tensorflow_datasets).
  config.data_dir = ''

  config.data = ml_collections.ConfigDict()
  # Normalisation preset: 'dataset' (the dataset's own mean/std), 'cifar10',
  # 'cifar100', 'imagenet' or 'none'.
  config.data.normalization = 'dataset'
  # Train on the first N training examples only (0 = all), for quick runs.
  config.data.train_examples = 0
  # Zero padding (pixels) before the random 32x32 crop; 0 disables cropping.
  config.data.crop_padding = 4
  # Random horizontal flip in training.
  config.data.random_flip = True
  # Augmentation policy on the uint8 image, after the crop and flip: 'none',
  # 'autoaugment' (Cubuk et al.'s CIFAR-10 policy: 25 sub-policies of two
  # operations) or 'randaugment' (randaugment_n operations at magnitude
  # randaugment_m of 0..30, torchvision's defaults 2 and 9). The operations
  # are JAX ports of PIL's (jax_resnet/augment/image_ops.py).
  config.data.policy = 'none'
  config.data.randaugment_n = 2
  config.data.randaugment_m = 9
  # Cutout (DeVries & Taylor): zero a random NxN square of each normalised
  # training image, which may hang over the border; 0 = off (16 is the
  # paper's for CIFAR-10, 8 for CIFAR-100).
  config.data.cutout = 0
  # Mixup (Zhang et al.) and CutMix (Yun et al.): Beta(alpha, alpha) mixing of
  # each example with its neighbour in the batch, one lam per batch; 0 = off.
  # The loss is taken against the mixed targets and the logged train accuracy
  # is lam-weighted. With both positive, each batch uses CutMix with
  # probability mix_switch_prob, else Mixup (the CIFAR tutorials: mixup 0.2,
  # cutmix 1.0, 0.5).
  config.data.mixup_alpha = 0.0
  config.data.cutmix_alpha = 0.0
  config.data.mix_switch_prob = 0.5
  # Hold out the last N training examples as a validation set (0 = none; 5000
  # is usual). Training then uses the others, the best checkpoint is the one
  # of the highest validation accuracy, and the report gives the test
  # accuracy at that epoch, so the test set plays no part in the selection.
  config.data.validation_examples = 0
  # Let TFDS try to download and prepare a missing dataset.
  config.data.download = True

  config.model = ml_collections.ConfigDict()
  # Network (docs/zoo.md): cifar_resnet (He et al. CIFAR ResNet), resnet
  # (ResNet-18..152 layout), resnext (ResNeXt-29 layout), wide_resnet,
  # pyramidnet or densenet.
  config.model.name = 'cifar_resnet'
  # Block: a registry name (basic, preact, gated, stochastic_depth, bottleneck,
  # custom, plain, se, se_bottleneck, resnext, res2net, split_attention) or
  # 'module:ClassName' for a block in your own module. pyramidnet and densenet
  # take basic or bottleneck (their own kinds); wide_resnet only basic.
  config.model.block = 'basic'
  # Depth: 6n+2 for cifar_resnet (20, 56, 110, 1202, ...) and basic
  # pyramidnet, 9n+2 for resnext and bottleneck pyramidnet, 18/34/50/101/152
  # for resnet, 6n+4 for wide_resnet and bottleneck densenet, 3n+4 for basic
  # densenet.
  config.model.depth = 20
  # Shortcut when shape changes: 'A' (subsample + zero channels, no
  # parameters), 'B' (1x1 conv + BN), 'conv' (1x1 conv, no BN), 'D' (ResNet-D,
  # ResNeSt's avg_down: 2x2 average pool when strided, then 1x1 conv + BN) or
  # 'auto' (the network's or block's default: A for basic blocks in
  # cifar_resnet, B for bottlenecks and in resnet / resnext, conv for
  # pre-activation blocks in resnet and in wide_resnet). pyramidnet and
  # densenet need 'auto'.
  config.model.shortcut = 'auto'
  # Stochastic depth: survival probability of the last block, p_L; block l of
  # L keeps its branch with p_l = 1 - (l/L)(1 - p_L). None = the block's
  # default (0.5 for stochastic_depth, 1.0 = off for the others).
  config.model.final_survival_probability = config_dict.placeholder(float)
  # Stochastic depth draw: 'batch' (one per mini-batch, as in the paper) or
  # 'example' (one per example).
  config.model.stochastic_depth_mode = 'batch'
  # BatchNorm momentum in PyTorch terms (weight of the current batch).
  config.model.bn_momentum = 0.1
  # BatchNorm epsilon.
  config.model.bn_epsilon = 1e-5
  # Computation dtype: 'float32', or 'bfloat16' for mixed precision (bf16
  # activations and convolution operands; parameters, optimiser state,
  # BatchNorm statistics, logits and loss stay float32; README, Performance,
  # bf16 on the CPU). On the CPU, bf16 convolutions run the project's AMX /
  # AVX512-BF16 kernels where the CPU has them ($JAX_RESNET_BF16_ISA).
  config.model.dtype = 'float32'
  # Scan over the identical blocks of a stage (nn.scan, parameters stacked on a
  # leading axis under stage{s}_blocks): compile time independent of depth.
  # Off by default: it costs step speed on CPU (README, Performance); worth it
  # for very deep networks, where it saves compile time and memory.
  config.model.scan_blocks = False
  # Convolution and BatchNorm backend: 'auto' (the project's CPU kernels on an
  # x86-64 CPU with AVX-512 or AVX2, XLA elsewhere: GPU, TPU, other CPUs),
  # 'xla', or 'cpu_kernels' (an error where they cannot run). See
  # jax_resnet/ops/cpu_kernels.py ($JAX_RESNET_CPU_ISA picks the instruction
  # set).
  config.model.conv_backend = 'auto'
  # The block's own hyper-parameters, by field name: the dataclass fields of
  # the block class beyond the block contract, e.g.
  # --config.model.block_kwargs.cardinality=16 for resnext, or any field of
  # your own block. Unset fields keep the block's defaults; an unknown name is
  # an error that lists the block's fields. Zoo blocks: resnext (cardinality
  # 8, base_width 64), res2net (base_width 26, scale 4), split_attention
  # (radix 2, cardinality 1, base_width 64, avd True: a strided block pools
  # with a 3x3 average after the split-attention convolution, or before it
  # with avd_first True, as ResNeSt does), se / se_bottleneck
  # (se_reduction 16).
  config.model.block_kwargs = ml_collections.ConfigDict()
  # Modules imported before the block is looked up, so that their
  # @blocks.register_block('name') classes can be named by model.block, e.g.
  # --config.model.block_modules="('my_blocks',)" (found on PYTHONPATH).
  config.model.block_modules = ()
  # Network hyper-parameters: None keeps the network's default (in brackets);
  # setting one the network does not take is an error.
  # wide_resnet width multiplier k of WRN-d-k (10).
  config.model.widen_factor = config_dict.placeholder(int)
  # Dropout rate: between the convolutions of wide_resnet blocks, after every
  # densenet convolution (0.0).
  config.model.dropout_rate = config_dict.placeholder(float)
  # pyramidnet widening alpha, summed over all blocks (48).
  config.model.pyramid_alpha = config_dict.placeholder(float)
  # densenet growth rate k, channels added per layer (12).
  config.model.growth_rate = config_dict.placeholder(int)
  # cifar_resnet and resnet: blocks per stage and their planes, in place of
  # the network's layout, e.g. (2, 2) and (64, 128); the first stage runs at
  # stride 1, every later one starts at stride 2. Given stage_blocks fix the
  # depth (2 or, for bottleneck blocks in resnet, 3 layers per block, + 2),
  # which model.depth must state. None = the network's (cifar_resnet: 16/32/64
  # planes, n = (depth - 2) / 6 blocks per stage).
  config.model.stage_blocks = config_dict.placeholder(tuple)
  config.model.stage_planes = config_dict.placeholder(tuple)
  # resnet stem: 'cifar' (3x3 convolution, stride 1) or 'imagenet' (7x7
  # stride-2 convolution + 3x3 stride-2 max pool, torchvision's) ('cifar').
  config.model.stem = config_dict.placeholder(str)
  # densenet compression: fraction of channels a transition keeps (0.5).
  config.model.compression = config_dict.placeholder(float)

  config.optimizer = ml_collections.ConfigDict()
  # 'sgd' (torch.optim.SGD), 'adam' (torch.optim.Adam: weight decay as L2 on
  # the gradient) or 'adamw' (torch.optim.AdamW: decoupled weight decay).
  config.optimizer.name = 'sgd'
  # Peak learning rate.
  config.optimizer.learning_rate = 0.1
  # SGD momentum (sgd only).
  config.optimizer.momentum = 0.9
  # Nesterov momentum (sgd only).
  config.optimizer.nesterov = False
  # Adam and AdamW: PyTorch's betas and eps.
  config.optimizer.betas = (0.9, 0.999)
  config.optimizer.eps = 1e-8
  # Weight decay: L2 added to the gradient (sgd: before momentum, as PyTorch
  # SGD; adam: before Adam), or decoupled (adamw: p -= lr * decay * p).
  config.optimizer.weight_decay = 5e-4
  # Which parameters are decayed: 'all' (PyTorch default) or 'conv_dense'
  # (kernels only; no decay on BatchNorm scale/bias, biases and gates).
  config.optimizer.weight_decay_on = 'all'
  # Learning-rate schedule (jax_resnet/schedules.py): 'cosine'
  # (CosineAnnealingLR to 0 at num_epochs), 'multistep' (MultiStepLR),
  # 'cosine_restarts' (SGDR, CosineAnnealingWarmRestarts) or 'constant'.
  config.optimizer.schedule = 'cosine'
  # multistep: epochs (of the whole run) at which the rate is multiplied by
  # gamma; () = 50% and 75% of num_epochs, He et al.'s protocol.
  config.optimizer.milestones = ()
  config.optimizer.gamma = 0.1
  # cosine_restarts: epochs of the first cycle (T_0) and the factor by which
  # each cycle is longer than the one before (T_mult).
  config.optimizer.restart_period = 10
  config.optimizer.restart_mult = 1
  # Linear warmup epochs before the schedule (0 = none).
  config.optimizer.warmup_epochs = 0
  # Schedule granularity: 'epoch' (constant within an epoch, like PyTorch's
  # schedulers stepped per epoch) or 'step'.
  config.optimizer.schedule_granularity = 'epoch'
  # SAM (Foret et al.): rho > 0 wraps the optimiser in sharpness-aware
  # minimisation, the update taken with the gradient at the weights
  # perturbed by rho * g / ||g|| (0 = off; 0.05 is the paper's for CIFAR).
  # Each device perturbs with its own gradient (jax_resnet/sam.py). Doubles
  # the cost of a step.
  config.optimizer.sam_rho = 0.0
  # Label smoothing of the cross-entropy targets (0 = none).
  config.optimizer.label_smoothing = 0.0

  # Exponential moving average of the parameters and BatchNorm statistics,
  # updated after every step (0 = off; 0.999 or 0.9999 typical). Evaluated
  # beside the trained weights each epoch (ema_test_accuracy), kept in the
  # checkpoints.
  config.ema_decay = 0.0
  # Stochastic weight averaging (Izmailov et al.) from this epoch (1-based) to
  # the end: the learning rate becomes the constant swa_learning_rate, the
  # parameters are averaged after every epoch, and the average's BatchNorm
  # statistics are recomputed over the training set before it is evaluated
  # (swa_test_accuracy). 0 = off; e.g. 161 of 200 epochs.
  config.swa_start_epoch = 0
  config.swa_learning_rate = 0.05
  # The weights the run is judged by: 'raw' (the trained ones), 'ema' or
  # 'swa'. The best checkpoint is chosen on their accuracy, and --mode eval
  # evaluates them.
  config.eval_weights = 'raw'

  config.distill = ml_collections.ConfigDict()
  # Knowledge distillation (Hinton et al.): the workdir of a trained teacher
  # ('' = off), e.g. runs/resnet56_cifar10, or one imported from PyTorch with
  # jax_resnet.interop.torch_import. Its best checkpoint is used, with the
  # weights its eval_weights names.
  config.distill.teacher_workdir = ''
  # The teacher's config file; '' = the config.json in its workdir.
  config.distill.teacher_config = ''
  # Loss: (1 - alpha) CE + alpha T^2 KL(teacher_T || student_T).
  config.distill.alpha = 0.9
  config.distill.temperature = 4.0

  # Training epochs; the cosine schedule spans them.
  config.num_epochs = 200
  # Global training batch size (split over all local devices). The last
  # incomplete batch of an epoch is dropped.
  config.batch_size = 128
  # Global evaluation batch size; the last batch is padded and masked.
  config.eval_batch_size = 500
  # Seed of initialisation, data order, augmentation and stochastic depth.
  config.seed = 0
  # Seeds trained together as one vmapped program, e.g. '0,1,2,3' ('' = off;
  # replaces seed). Each seed draws what its own run would and writes
  # <workdir>/seed<k> as that run would write its workdir.
  config.pack_seeds = ''
  # Host syncs for the NaN check and the progress bar, every N steps.
  config.log_every_steps = 50
  # Train steps per compiled call (a lax.scan over them): 'auto' = 1 on the
  # CPU, where a step dwarfs its dispatch, and 8 on GPU and TPU, where a
  # small network's step lasts about a millisecond (jax_resnet/platforms.py).
  # Results equal one step per call within float rounding.
  config.steps_per_dispatch = ml_collections.FieldReference('auto',
                                                          field_type=object)
  # Latest checkpoints kept (the best one is kept separately).
  config.checkpoints_to_keep = 3
  # Also save a mid-epoch checkpoint every N train steps (0 = only at epoch
  # ends); only the newest is kept, in <workdir>/mid_epoch. A graceful stop
  # (SIGTERM, SIGINT) saves one at the step it stops on, whatever this is.
  config.checkpoint_every_steps = 0
  # Checkpoint restored by --mode eval: 'best' or 'latest'.
  config.eval_checkpoint = 'best'
  return config
