"""``python -m emu`` is the ``emu`` command."""

import sys

from emu.tools.cli import main

sys.exit(main())
