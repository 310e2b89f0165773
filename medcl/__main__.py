"""``python -m medcl`` (and ``torchrun -m medcl run ...``)."""

import sys

from medcl.cli import main

sys.exit(main())
