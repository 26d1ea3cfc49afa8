"""``python -m overlay.cli``: the same as the ``overlay`` command."""

import sys

from overlay.cli._main import main

sys.exit(main())
