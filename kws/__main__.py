"""``python -m kws COMMAND ...``: the ``kws`` command (what ``torchrun -m kws train ...`` runs in each process)."""

import sys

from kws.cli import main

if __name__ == "__main__":
    sys.exit(main())
