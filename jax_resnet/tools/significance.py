"""Is a difference between grid cells more than seed noise? Welch's t-test.

For two cells of a grid (the same setting with two blocks, or the same block
in two settings) with accuracies a (n_a seeds) and b (n_b seeds):

- the difference of means ``mean(a) - mean(b)``;
- its 95% confidence interval from Welch's t distribution (unequal
  variances, Welch-Satterthwaite degrees of freedom);
- the two-sided p-value of Welch's t-test (``scipy.stats.ttest_ind`` with
  ``equal_var=False``).

Both need two or more seeds on each side, and some spread: with fewer
seeds, or every seed equal on both sides (the t statistic undefined), only
the difference is given. A p-value is per comparison: with many blocks and settings, some small
p-values arise by chance alone.
"""

import dataclasses
import math
from typing import Optional, Sequence

from scipy import stats

CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Welch:
  """Welch's comparison of two samples (``a`` minus ``b``)."""
  difference: float
  ci_low: Optional[float]
  ci_high: Optional[float]
  p_value: Optional[float]
  n_a: int
  n_b: int


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
  """Difference of means, its 95% CI and Welch's p-value (None below two
  values on a side)."""
  if not a or not b:
    raise ValueError('welch needs at least one value on each side.')
  difference = math.fsum(a) / len(a) - math.fsum(b) / len(b)
  if len(a) < 2 or len(b) < 2 or (len(set(a)) == 1 and len(set(b)) == 1):
    return Welch(difference, None, None, None, len(a), len(b))
  result = stats.ttest_ind(a, b, equal_var=False)
  interval = result.confidence_interval(CONFIDENCE)
  return Welch(difference, float(interval.low), float(interval.high),
               float(result.pvalue), len(a), len(b))


@dataclasses.dataclass(frozen=True)
class Row:
  """One comparison of a grid: ``cell`` against the reference cell."""
  setting: str
  block: str
  best: Welch
  final: Welch


def compare(cells: dict[tuple[str, str], Sequence[tuple[float, float]]],
            blocks: Sequence[str], settings: Sequence[str],
            reference: str) -> tuple[str, list[Row]]:
  """Every cell against the reference block (in its setting) or the
  reference setting (for its block).

  Args:
    cells: (block, setting) -> the (best, final) accuracy of each finished
      seed.
    blocks: the grid's blocks, in order.
    settings: the grid's settings, in order.
    reference: a block or a setting of the grid.

  Returns:
    ('block' or 'setting', the rows), for cells with finished seeds on both
    sides.

  Raises:
    ValueError: the reference is neither a block nor a setting.
  """
  if reference in blocks:
    kind = 'block'
    pairs = [((b, s), (reference, s)) for s in settings for b in blocks
             if b != reference]
  elif reference in settings:
    kind = 'setting'
    pairs = [((b, s), (b, reference)) for b in blocks for s in settings
             if s != reference]
  else:
    raise ValueError(f'--compare {reference!r} is neither a block '
                     f'({", ".join(blocks)}) nor a setting '
                     f'({", ".join(settings)}) of this grid.')
  rows = []
  for cell, ref in pairs:
    values, ref_values = cells.get(cell, ()), cells.get(ref, ())
    if not values or not ref_values:
      continue

    def column(i: int, values=values, ref_values=ref_values) -> list[float]:
      return [v[i] for v in values], [v[i] for v in ref_values]

    rows.append(Row(cell[1], cell[0], welch(*column(0)), welch(*column(1))))
  return kind, rows


def _signed(value: float) -> str:
  return f'{value:+.2f}'


def _format(w: Welch) -> list[str]:
  if w.p_value is None:
    return [_signed(w.difference), 'n/a', 'n/a']
  return [_signed(w.difference), f'[{w.ci_low:+.2f}, {w.ci_high:+.2f}]',
          f'{w.p_value:.3g}']


def markdown(kind: str, reference: str, rows: Sequence[Row],
             selection_note: str) -> str:
  """The comparison table."""
  where = 'in the same setting' if kind == 'block' else 'for the same block'
  lines = [
      f'# Against {kind} {reference}', '',
      f'Each row: mean accuracy of the cell minus that of {kind} '
      f'{reference} ({where}), '
      f'in percentage points, over the finished seeds; the {CONFIDENCE:.0%} '
      "confidence interval of that difference and the p-value of Welch's "
      't-test (two-sided, unequal variances; n/a below two seeds a side '
      'or without spread). '
      f'{selection_note} Many comparisons give some small p-values by '
      'chance alone.', '',
      '| setting | block | seeds | best: difference | best: 95% CI | best: '
      'p | final: difference | final: 95% CI | final: p |',
      '|---|---|---|---|---|---|---|---|---|']
  for row in rows:
    lines.append('| ' + ' | '.join(
        [row.setting, row.block, f'{row.best.n_a} vs {row.best.n_b}'] +
        _format(row.best) +
        _format(row.final)) + ' |')
  if not rows:
    lines.append('| (no cell with finished runs to compare) |||||||||')
  return '\n'.join(lines) + '\n'
