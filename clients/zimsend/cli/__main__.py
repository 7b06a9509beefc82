"""`python -m zimsend.cli` is the `zimsend` command (used by supervisors to start children
with the same interpreter)."""

import sys

from zimsend.cli import main

sys.exit(main())
