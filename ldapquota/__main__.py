"""``python -m ldapquota``: the same entry point as the console script."""

import sys

from ldapquota.cli import main

sys.exit(main())
