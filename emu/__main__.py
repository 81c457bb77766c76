"""``python -m emu`` is the ``emu`` command."""

import sys

from emu.cli import main

sys.exit(main())
