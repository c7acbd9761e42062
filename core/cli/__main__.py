"""``python -m power_sampling.cli``: the same as the ``power-sampling`` command."""

import sys

from . import main

sys.exit(main())
