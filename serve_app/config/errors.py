"""The one error type of configuration: every problem found, reported together."""

from __future__ import annotations


class ConfigError(Exception):
    """Invalid configuration. `problems` lists every bad variable, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        head = f"Invalid configuration ({count} problem{'s' if count != 1 else ''}):"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])
