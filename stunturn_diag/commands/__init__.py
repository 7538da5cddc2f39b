"""One click command per module; ``cli.py`` registers them on the group.

Commands stay thin: parse options, call one library function, format its result.
Helpers shared by commands live in ``_common``.
"""
