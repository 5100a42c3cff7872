"""Model families: one module each, registered when the registry is first asked (registry.py)."""

from aigc_cli.models.base import GenerativeModel, Stage

__all__ = ["GenerativeModel", "Stage"]
