"""``python -m dip``: the same as the ``dip`` command."""

import sys

from dip.cli.main import main

sys.exit(main())
