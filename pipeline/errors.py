"""The one exception a user's mistake raises."""


class QliftError(ValueError):
    """Bad input: a config, data file, command line or store from another run.

    The message is one line that names the offending field, its value and the
    rule it breaks, and says how to fix it. The CLI prints it without a
    traceback and exits with status 2.
    """


class RunFailed(RuntimeError):
    """A run that could not finish (a shard failed on every retry, a lost store).

    Work already finished is kept and marked, so rerunning the same command
    resumes; the CLI prints the message as one line and exits with status 1.
    """
