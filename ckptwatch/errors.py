"""One exception tree with exit codes (borg style).

Findings about checkpoints are data (``Problem``), never exceptions. These exceptions are for the
tool's own failures: a bad command line or config (exit 2). The CLI's single top-level handler turns
them into one clear line on stderr.
"""

from __future__ import annotations


class CkptwatchError(Exception):
    """Base of ckptwatch's own errors."""

    exit_code = 2


class UsageError(CkptwatchError):
    """The command line asks for something impossible (a path that does not exist, a bad option)."""

    exit_code = 2


class ConfigError(CkptwatchError):
    """The config file is invalid; the message names the file and the dotted key."""

    exit_code = 2
