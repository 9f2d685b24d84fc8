"""`python -m models > docs/ladder.md`: print the default ladder's size and compute table."""

from models.ladder import ladder_table

print(ladder_table(), end="")
