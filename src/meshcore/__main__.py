"""``python -m meshcore``: the ``meshcore`` command."""

import sys

from meshcore.cli import main

sys.exit(main())
