"""``python -m metacollapse``: the same command line as the ``metacollapse`` script."""

import sys

from metacollapse.cli import main

sys.exit(main())
