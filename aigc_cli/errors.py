"""User-facing errors: one readable line naming the problem and the fix.

The CLI prints these without a traceback (HYDRA_FULL_ERROR=1 shows it); anything else that
escapes is a bug in aigc and keeps its traceback.
"""


class AigcError(Exception):
    """A problem the user can fix; `str()` is the message shown, `hint` says how to fix it."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} ({self.hint})" if self.hint else base


class ConfigError(AigcError):
    """A bad key, type or value in the composed config."""


class DataError(AigcError):
    """A dataset that cannot be found or read."""


class CheckpointError(AigcError):
    """A checkpoint that is missing, corrupt, unsafe or incompatible."""


class TrainingError(AigcError):
    """Training cannot continue (non-finite loss, out of memory)."""


def missing_music(what: str) -> ConfigError:
    """The one line for music without the optional `music` extra installed."""
    return ConfigError(
        f"{what} needs the optional `music` extra (music21, mido, symusic)",
        hint="pip install 'aigc[music]' (from a checkout: pip install -e '.[music]')",
    )


class UserExit(BaseException):
    """Carries an AigcError out of a single Hydra run: a BaseException passes Hydra's job runner
    untouched, so it prints no 'Error executing job' banner before the CLI's one line."""

    def __init__(self, error: AigcError) -> None:
        super().__init__(str(error))
        self.error = error
