"""Numbers in sentences, said the same way in the app and the CLI.

    counted(1, "vote")                    # '1 vote'
    counted(6, "pair")                    # '6 pairs'
    counted(2, "person", "people")        # '2 people'
"""

from __future__ import annotations


def counted(n: int, one: str, many: str | None = None) -> str:
    """'0 votes', '1 vote', '2 votes' (`many`: a plural that is not `one` + s)."""
    return f"{n} {one if n == 1 else many or one + 's'}"
