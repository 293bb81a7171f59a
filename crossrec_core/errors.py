"""The project's error hierarchy: one base class, one subclass per kind of failure."""

from __future__ import annotations

from collections.abc import Sequence


class CrossrecError(Exception):
    """Base class of every error crossrec raises on purpose."""


class ProblemsError(CrossrecError):
    """An error that carries every problem found, so a user can fix them all at once."""

    max_shown = 20

    def __init__(self, headline: str, problems: Sequence[str]) -> None:
        self.headline = headline
        self.problems = list(problems)
        shown = self.problems[: self.max_shown]
        lines = [headline] + [f"  - {p}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        super().__init__("\n".join(lines))


class DataValidationError(ProblemsError):
    """A silo file is missing, malformed or cannot be split; the message names file, line and value."""


class ConfigError(ProblemsError):
    """A run-config value is unknown, of the wrong type or out of range; the message names the key."""


class PrivacyError(CrossrecError):
    """A privacy plan cannot be met (e.g. the budget is too small) or a budget would be exceeded."""


class TrainingError(CrossrecError):
    """Training diverged (non-finite loss) or was asked to do something impossible."""
