"""One exception tree, and every exit code of ckptwatch.

Findings about checkpoints are data (``Problem``), never exceptions. These exceptions are the tool's
own failures that an operator can fix: a bad command line or config, or a state store the service
cannot use. Each class carries its exit code; the CLI's single top-level handler prints the message as
one line on stderr and exits with that code. Anything else that escapes is a bug (exit 3).

The exit codes, all defined here:

====  =====================  =====================================================================
code  name                   meaning
====  =====================  =====================================================================
0     EXIT_OK                all good
1     EXIT_PROBLEMS          the command worked and found problems (a bad checkpoint, a loss jump)
2     EXIT_USAGE             bad command line or config file; the message names the option or key
3     EXIT_INTERNAL          a bug in ckptwatch (``CKPTWATCH_DEBUG=1`` shows the traceback)
4     EXIT_STATE_ACCESS      the state dir or file cannot be created, read or written: permission
                             denied, a read-only filesystem, an I/O error
5     EXIT_STATE_LOCKED      another ckptwatch service holds the state dir
6     EXIT_STATE_CORRUPT     the state file is not a (ckptwatch) sqlite database
7     EXIT_DISK_FULL         no space left on the filesystem holding the state dir
130   EXIT_INTERRUPTED       interrupted (Ctrl-C), 128 + SIGINT as shells report it
====  =====================  =====================================================================

Why a code per state failure, not one "operator error" code: a supervisor can tell them apart
without parsing text. Nothing heals 2, 5 or 6 by itself (a config to edit, a second service to stop or
point elsewhere, a damaged file to move aside), so the systemd unit lists them in
``RestartPreventExitStatus=`` rather than restart-looping on them; 4 and 7 can heal without ckptwatch
(a filesystem mounted late, space freed by someone else), so systemd keeps retrying those. 4 to 7 sit
above the codes scripts already test for (0 to 3) and below the 64 to 78 of ``sysexits.h`` and the 128+
of signals.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_STATE_ACCESS = 4
EXIT_STATE_LOCKED = 5
EXIT_STATE_CORRUPT = 6
EXIT_DISK_FULL = 7
EXIT_INTERRUPTED = 130


class CkptwatchError(Exception):
    """Base of ckptwatch's own errors: the message says what is wrong, where, and what to do."""

    exit_code = EXIT_USAGE


class UsageError(CkptwatchError):
    """The command line asks for something impossible (a path that does not exist, a bad option)."""

    exit_code = EXIT_USAGE


class ConfigError(CkptwatchError):
    """The config file is invalid; the message names the file and the dotted key."""

    exit_code = EXIT_USAGE


class StateError(CkptwatchError):
    """The service's state store (its dir, ``state.sqlite``, the lock) cannot be used.

    An operator error, not a bug: the fix is outside ckptwatch (permissions, space, a second
    instance, a damaged file). ``path`` is the file or directory at fault.
    """

    exit_code = EXIT_STATE_ACCESS

    def __init__(self, path: str, problem: str, action: str) -> None:
        self.path = path
        self.problem = problem
        self.action = action
        super().__init__(f"{path}: {problem}. {action}")


class StateAccessError(StateError):
    """Permission denied, a read-only filesystem, a directory where the file belongs, an I/O error."""

    exit_code = EXIT_STATE_ACCESS


class StateLockedError(StateError):
    """Another ckptwatch service holds the state dir's lock (two services on one state dir)."""

    exit_code = EXIT_STATE_LOCKED


class StateCorruptError(StateError):
    """The state file is not an sqlite database, sqlite found it damaged, or it holds no ckptwatch state."""

    exit_code = EXIT_STATE_CORRUPT


class DiskFullError(StateError):
    """The filesystem holding the state dir is full (``ENOSPC``, ``EDQUOT``, ``SQLITE_FULL``)."""

    exit_code = EXIT_DISK_FULL
