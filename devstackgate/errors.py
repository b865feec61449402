"""Errors that classify themselves.

Each error carries a short ``reason`` (quota, error, timeout, no-network, ...)
that scripts record in the database and count in their summaries, and an
``exit_code`` the top-level script returns, so no caller needs isinstance
chains.  Messages never contain secrets.
"""


class GateError(Exception):
    """Base class: one clear line for the console."""
    reason = 'error'
    exit_code = 1

    def lines(self):
        return [str(self)]


class ConfigError(GateError):
    """A bad configuration file; one message line per problem."""
    reason = 'config'
    exit_code = 2

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__('\n'.join(self.problems))

    def lines(self):
        return self.problems


class UsageError(GateError):
    """Bad input on the command line (unknown label, bad option value)."""
    reason = 'usage'
    exit_code = 2


class DatabaseError(GateError):
    reason = 'database'


class DatabaseBusy(DatabaseError):
    """Lock waits ran out after every retry."""
    reason = 'database-busy'


class NoNodeAvailable(GateError):
    reason = 'no-node'
