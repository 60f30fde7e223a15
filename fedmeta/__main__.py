"""``python -m fedmeta``: the same as the ``fedmeta`` command."""

import sys

from .cli import main

sys.exit(main())
