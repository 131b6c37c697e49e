"""``python -m fastclr ...`` runs the ``fastclr`` command line (see :mod:`fastclr.cli`)."""

from fastclr.cli import run

if __name__ == "__main__":
    raise SystemExit(run())
