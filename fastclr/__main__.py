"""``python -m fastclr ...`` runs the ``fastclr`` command line (see :mod:`fastclr.cli`)."""

from fastclr.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
