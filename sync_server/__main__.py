"""``python -m sync_server``: the same as ``hwr-sync-server``."""

import sys

from .cli import main

sys.exit(main())
