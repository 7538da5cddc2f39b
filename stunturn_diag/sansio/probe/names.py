"""The UDP probes' names: one vocabulary shared by the plan and the classifier (pure).

A probe's name is a :class:`ProbeName`: a ``str`` (so the JSON evidence and every
outcome lookup read ``"map.primary"``, ``"alloc.3"``, ``"life.y0"`` as before) that also
carries its :class:`Kind` and, for the numbered kinds, its index, so nothing has to
slice the text apart again.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """What a probe tests (the values are the names' text; numbered kinds add the index)."""

    MAP_PRIMARY = "map.primary"        # RFC 5780 4.3 test I
    MAP_ALT_IP = "map.alt_ip"          # test II
    MAP_ALT_BOTH = "map.alt_both"      # test III
    MAP_ALT_PORT = "map.alt_port"
    ALLOC = "alloc."                   # port allocation, fresh socket 1.. (RFC 4787 4.2.1)
    FILT_CHANGE_BOTH = "filt.change_both"  # filtering (RFC 5780 4.4)
    FILT_CHANGE_PORT = "filt.change_port"
    UNSOL_BIND = "unsol.bind"          # the unsolicited-inbound mapping move test
    UNSOL_CONFIRM = "unsol.confirm"
    UNSOL_INBOUND = "unsol.inbound"
    UNSOL_AFTER = "unsol.after"
    HAIR_A = "hair.a"                  # hairpinning (RFC 5780 3.4)
    HAIR_B = "hair.b"
    HAIR_A_TO_B = "hair.a_to_b"
    HAIR_B_TO_A = "hair.b_to_a"
    LIFE_X = "life.x"                  # binding lifetime (RFC 5780 4.6), step 0..
    LIFE_Y = "life.y"


#: the kinds whose names end in an index
NUMBERED = frozenset({Kind.ALLOC, Kind.LIFE_X, Kind.LIFE_Y})


class ProbeName(str):
    """A probe's name: equal to (and hashed as) its text, with ``kind`` and ``index``."""

    kind: Kind
    index: int | None

    def __new__(cls, kind: Kind, index: int | None = None) -> "ProbeName":
        if (index is not None) != (kind in NUMBERED):
            raise ValueError(f"{kind.name} takes {'an' if kind in NUMBERED else 'no'} index")
        self = super().__new__(cls, kind.value if index is None else f"{kind.value}{index}")
        self.kind, self.index = kind, index
        return self

    def __getnewargs__(self) -> tuple:  # copy / pickle rebuild it from its parts
        return (self.kind, self.index)

    @classmethod
    def of(cls, name: str) -> "ProbeName":
        """``name`` as a :class:`ProbeName` (the text of one is read back; ValueError if unknown)."""
        if isinstance(name, ProbeName):
            return name
        for kind in Kind:
            if kind in NUMBERED:
                rest = name[len(kind.value):]
                if name.startswith(kind.value) and rest.isdigit():
                    return cls(kind, int(rest))
            elif name == kind.value:
                return cls(kind)
        raise ValueError(f"not a probe name: {name!r}")


def alloc(i: int) -> ProbeName:
    """The allocation probe from fresh socket ``i`` (1-based)."""
    return ProbeName(Kind.ALLOC, i)


def life_x(i: int) -> ProbeName:
    """Lifetime step ``i``: the request that creates the binding."""
    return ProbeName(Kind.LIFE_X, i)


def life_y(i: int) -> ProbeName:
    """Lifetime step ``i``: the RESPONSE-PORT request after the wait."""
    return ProbeName(Kind.LIFE_Y, i)
