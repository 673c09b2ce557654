"""`python -m dglm` (and `accelerate launch -m dglm`) run the command-line tool."""

import sys

from dglm.cli import main

sys.exit(main())
