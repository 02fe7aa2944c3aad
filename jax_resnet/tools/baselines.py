"""Published CIFAR test errors, shown beside measured runs by the report.

Only figures as the papers print them, each with its table; CAVEAT says how
far they compare.
"""

import dataclasses

CAVEAT = ('The published figures come from other training protocols than '
          "this benchmark's (step learning-rate schedules, weight decay 1e-4, "
          'about 164 epochs, mostly single runs): they orient, they are not a '
          'controlled comparison.')
HE_2015 = 'He et al. 2015'
HE_2016 = 'He et al. 2016'
HUANG_2016 = 'Huang et al. 2016'
# Full references of the short citations.
PAPERS = {
    HE_2015: ('K. He, X. Zhang, S. Ren, J. Sun. Deep Residual Learning for '
              'Image Recognition. CVPR 2016 (arXiv:1512.03385, 2015).'),
    HE_2016: ('K. He, X. Zhang, S. Ren, J. Sun. Identity Mappings in Deep '
              'Residual Networks. ECCV 2016 (arXiv:1603.05027).'),
    HUANG_2016: ('G. Huang, Y. Sun, Z. Liu, D. Sedra, K. Weinberger. Deep '
                 'Networks with Stochastic Depth. ECCV 2016 '
                 '(arXiv:1603.09382).'),
}


@dataclasses.dataclass(frozen=True)
class Baseline:
  """One published test error.

  Attributes:
    network: the paper's name for the network, e.g. 'ResNet-110'.
    block: the registry block closest to the paper's unit.
    depth: the network's depth.
    dataset: 'cifar10' or 'cifar100' (both with the standard augmentation).
    test_error: test error in percent, as printed.
    paper: short citation, a key of PAPERS.
    table: where in the paper.
    note: what else a reader needs to know about the figure.
  """

  network: str
  block: str
  depth: int
  dataset: str
  test_error: float
  paper: str
  table: str
  note: str = ''

  @property
  def test_accuracy(self) -> float:
    return 100.0 - self.test_error

  @property
  def source(self) -> str:
    return f'{self.paper}, {self.table}'


BASELINES: tuple[Baseline, ...] = (
    Baseline('ResNet-20', 'basic', 20, 'cifar10', 8.75, HE_2015, 'Table 6'),
    Baseline('ResNet-32', 'basic', 32, 'cifar10', 7.51, HE_2015, 'Table 6'),
    Baseline('ResNet-44', 'basic', 44, 'cifar10', 7.17, HE_2015, 'Table 6'),
    Baseline('ResNet-56', 'basic', 56, 'cifar10', 6.97, HE_2015, 'Table 6'),
    Baseline('ResNet-110', 'basic', 110, 'cifar10', 6.43, HE_2015, 'Table 6',
             'best of 5 runs; their mean error is 6.61 ± 0.16'),
    Baseline('ResNet-1202', 'basic', 1202, 'cifar10', 7.93, HE_2015,
             'Table 6'),
    Baseline('pre-act ResNet-164', 'preact', 164, 'cifar10', 5.46, HE_2016,
             'Table 3', 'bottleneck pre-activation units'),
    Baseline('pre-act ResNet-164', 'preact', 164, 'cifar100', 24.33, HE_2016,
             'Table 3', 'bottleneck pre-activation units'),
    Baseline('ResNet-110, stochastic depth', 'stochastic_depth', 110,
             'cifar10', 5.25, HUANG_2016, 'Table 1', 'p_L = 0.5'),
)


def matching(dataset: str, depth: int) -> list[Baseline]:
  """Published figures for a dataset and depth, in table order."""
  return [b for b in BASELINES if b.dataset == dataset and b.depth == depth]
