"""Room impulse responses for the convolution augmentation (``doppelgen irs``).

The public face the trainer uses is these two names; the rest lives in
:mod:`doppelgen.irs.sets` (rendering a set), :mod:`doppelgen.irs.rooms` (rooms and one
response), :mod:`doppelgen.irs.verify` and :mod:`doppelgen.irs.cli`.
"""

from doppelgen.irs.rooms import IrError
from doppelgen.irs.sets import default_ir_dir

__all__ = ["IrError", "default_ir_dir"]
