"""`python -m mbrl` runs the `mbrl` command line."""

import sys

from mbrl.cli import main

sys.exit(main())
