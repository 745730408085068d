"""`python tests/warm_cli.py`: one process imports sbssl's dependencies once, then forks a child per CLI run.

The suite runs the CLI about a hundred times, and a fresh interpreter spends ~4 s of each run importing torch,
timm and scikit-learn before doing milliseconds of work on a tiny set. A child forked from this warm process
starts with those modules loaded and nothing else in common with its siblings: its own pid, working directory,
environment, stdin (empty), stdout and stderr files and exit status, as `python -m sbssl.cli ARGS` would have.
What a child cannot do is re-execute itself (a DDP launcher does): those runs take a fresh process
(`run_cli(..., fresh=True)`), as do the tests of installation and the DDP launcher.

Protocol, JSON lines on stdin/stdout: {"argv", "cwd", "env", "stdout", "stderr", "timeout"} -> {"pid"} once the
child is forked, then {"rc", "timed_out"}; rc is the child's exit code, or minus the signal that ended it
(subprocess's convention). With SBSSL_KILL in env the child installs tests/crash_run.py's kill point first.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import signal
import sys
import time
import traceback

# what the commands import lazily; loading it here is the whole saving
PRELOAD = ("sbssl.cli", "sbssl.workflow", "sbssl.engine.pretrain", "sbssl.synth", "sbssl.synth.gallery",
           "sbssl.data.check", "sbssl.data.kneemri", "sbssl.evaluation.scoring", "sbssl.evaluation.fusion",
           "sbssl.evaluation.report_files", "sbssl.predict", "sbssl.explain", "sbssl.export", "sbssl.report",
           "sbssl.reproduce", "sbssl.demo")


def _exit_code(code: object) -> int:
    """SystemExit's code as the interpreter turns it into a status."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


def _child(req: dict) -> int:
    """Become `sbssl ARGV` run in req's directory, environment and output files; return its exit code."""
    if req["cwd"]:
        os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    if os.environ.get("SBSSL_KILL"):  # tests/crash_run.py's kill point, installed as that script does
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        importlib.import_module("crash_run").install(os.environ["SBSSL_KILL"])
    sys.argv = [sys.modules["sbssl.cli"].__file__, *req["argv"]]
    try:
        rc = _exit_code(sys.modules["sbssl.cli"].main(req["argv"]))
    except SystemExit as e:
        rc = _exit_code(e.code)
    except BaseException:  # noqa: BLE001 - an uncaught exception ends a real process with a traceback and 1
        traceback.print_exc()
        rc = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    return rc


def _wait(pid: int, timeout: float) -> tuple[int, bool]:
    """The child's status as subprocess reports it; killed (and flagged) once it outlives timeout."""
    deadline, timed_out = time.monotonic() + timeout, False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), timed_out
        if not timed_out and time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            timed_out = True
        time.sleep(0.01)


def serve() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            rc = 1
            try:
                rc = _child(req)
            finally:
                os._exit(rc)
        os.write(1, (json.dumps({"pid": pid}) + "\n").encode())  # a test may signal it, as it would a Popen
        rc, timed_out = _wait(pid, req["timeout"])
        os.write(1, (json.dumps({"rc": rc, "timed_out": timed_out}) + "\n").encode())


if __name__ == "__main__":
    serve()
