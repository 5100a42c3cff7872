"""Model families; importing this package registers every built-in one."""

from aigc_cli.models import classifier, gan, transformer, vae  # noqa: F401
from aigc_cli.models.base import GenerativeModel, Stage

__all__ = ["GenerativeModel", "Stage"]
