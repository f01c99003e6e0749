"""``python -m prunekit`` (and ``torchrun -m prunekit``) run the command line."""

import sys

from .cli import main

sys.exit(main())
