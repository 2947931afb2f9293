"""Names that must be unique in a runbook list, refused with where both uses are.

A repeated name is almost always a copy-paste mistake whose effect is silent: the
second flow of one name replaces the first in a report, two probes of one name
count as one in the quorum, a secret listed twice is rewritten twice. Models call
:func:`require_unique` from their validators; the :class:`DuplicateName` it raises
carries the path of both items, relative to the validated model, so the runbook
loader can name the line of each (pydantic only knows the model's own location).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

Path = tuple[int | str, ...]


class DuplicateName(ValueError):
    """``at`` is the repeated item's path and ``first`` the earlier one's, both relative to
    the model whose validator raised (for example ``("flows", 2, "name")``)."""

    def __init__(self, message: str, at: Path, first: Path) -> None:
        super().__init__(message)
        self.at = at
        self.first = first


def require_unique(values: Sequence[Hashable], what: str, path: Path = (),
                   field: str | None = "name", keys: Sequence[str] | None = None) -> None:
    """Raise :class:`DuplicateName` for the first value seen twice.

    ``values[i]`` is item ``i`` of the list at ``path`` (or the value under ``keys[i]``
    of the mapping at ``path``); ``field`` is the item's key that holds the name
    (``None`` when the item is the name itself).
    """
    seen: dict[Hashable, int] = {}
    for index, value in enumerate(values):
        if value in seen:
            def where(i: int) -> Path:
                item = (*path, keys[i] if keys is not None else i)
                return (*item, field) if field else item

            raise DuplicateName(f"{what} must be unique: {_show(value)} is used twice",
                                at=where(index), first=where(seen[value]))
        seen[value] = index


def _show(value: Hashable) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(repr(v) for v in value) + ")"
    return repr(value)
