"""``python -m tap_emulator`` runs the command line."""

import sys

from tap_emulator.cli import main

sys.exit(main())
