"""``python -m convunext`` (and ``torchrun -m convunext``) runs the command line."""

import sys

from .cli.main import main

sys.exit(main())
