"""``python -m tap_emulator`` runs the command line."""

import sys

from tap_emulator.cli import main

# Guarded: the key-derivation worker process (spawn) imports the main module again.
if __name__ == "__main__":
    sys.exit(main())
