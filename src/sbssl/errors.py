"""User-facing faults: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

from pathlib import Path


class SbsslError(Exception):
    """A fault in what the user gave us (data, config, paths), not a bug in sbssl."""


class DataError(SbsslError):
    """A dataset file is unusable; the message names the file and the fault."""

    def __init__(self, path: str | Path, fault: str):
        self.path, self.fault = str(path), fault
        super().__init__(f"{path}: {fault}")


class ConfigError(SbsslError):
    pass
