"""`python tests/crash_run.py SBSSL-ARGS...`: run the sbssl CLI, then SIGKILL this process at a chosen point.

SBSSL_KILL=save:N  dies during the N-th checkpoint write (half the bytes on disk, no rename yet)
SBSSL_KILL=step:N  dies at the start of this process's N-th optimiser step

SIGKILL cannot be caught: nothing in sbssl gets to clean up, exactly as with `kill -9`,
a power cut or the OOM killer. Only the moment is chosen here; the code under test is unchanged.
"""

from __future__ import annotations

import io
import os
import signal
import sys


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _counting(n: int):
    calls = [0]

    def hit() -> bool:
        calls[0] += 1
        return calls[0] == n

    return hit


def install(spec: str) -> None:
    import torch

    import sbssl.engine.loop as loop

    kind, n = spec.split(":")
    hit = _counting(int(n))
    if kind == "save":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if not hit():
                return real_save(obj, f, *args, **kwargs)
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            with open(f, "wb") as fh:  # the temp file atomic_write gave us
                fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                fh.flush()
                os.fsync(fh.fileno())
            _die()

        torch.save = save
    elif kind == "step":
        real = loop.apply_schedule  # the start of every optimiser step, in both stages

        def apply_schedule(*args, **kwargs):
            if hit():
                _die()
            return real(*args, **kwargs)

        loop.apply_schedule = apply_schedule
    else:
        raise SystemExit(f"crash_run: unknown SBSSL_KILL={spec!r}")


if __name__ == "__main__":
    if os.environ.get("SBSSL_KILL"):
        install(os.environ["SBSSL_KILL"])
    from sbssl.cli import main

    sys.exit(main(sys.argv[1:]))
