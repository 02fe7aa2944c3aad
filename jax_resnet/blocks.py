"""The public extension API: ``from jax_resnet.blocks import ResidualBlock``.

The blocks live in ``jax_resnet.models.blocks``; this module is the same
module under its published name, so a block registered through either name
is the same registration.
"""

import sys

from jax_resnet.models import blocks as _blocks

sys.modules[__name__] = _blocks
