"""Run the ``fastclr`` command line in this process with one injected fault (for test_faults_cli).

    python tests/fault_probe.py [--kill-in-write FRACTION | --enospc-in-write] -- pretrain ...

``--kill-in-write F`` makes the first checkpoint write of the run stop dead (SIGKILL, as
``kill -9``) after writing the fraction F of the file's bytes, so the kill lands inside the write
at a chosen point. ``--enospc-in-write`` makes it fail with ``OSError(ENOSPC)`` part-way, as a
full disk does, for machines where the test cannot mount a small file system. Everything else
is the real CLI: the exit status is ``fastclr.cli.main``'s.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path


def _install(kill_fraction: float | None, enospc: bool) -> None:
    import fastclr.atomic as ck

    real = ck._write_durably

    def faulty(path: Path, data: bytes) -> None:
        cut = int(len(data) * (kill_fraction if kill_fraction is not None else 0.5))
        with open(path, "wb") as f:
            f.write(data[:cut])
            f.flush()
            if enospc:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        real(path, data)  # pragma: no cover - never reached

    ck._write_durably = faulty  # type: ignore[assignment]


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    split = argv.index("--")
    opts, cli_args = argv[:split], argv[split + 1 :]
    kill_fraction = None
    enospc = False
    if opts[:1] == ["--kill-in-write"]:
        kill_fraction = float(opts[1])
    elif opts[:1] == ["--enospc-in-write"]:
        enospc = True
    elif opts:
        print(f"unknown options {opts}", file=sys.stderr)
        return 2
    if kill_fraction is not None or enospc:
        _install(kill_fraction, enospc)
    from fastclr.cli import main as cli_main

    return cli_main(cli_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
