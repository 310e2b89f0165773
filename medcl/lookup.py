"""Registry look-ups and "did you mean" hints: the one place medcl calls :mod:`difflib`.

Every registry (``ENCODERS``, ``METHODS``, ``LOSSES``, ``READERS``, ``AMP_MODES``, ...) is looked up
with :func:`look_up`, after MONAI's ``look_up_option``: the entry comes back, or a
:class:`~medcl.errors.MedclError` names the unknown value, the closest valid names and all of them::

    unknown optimizer 'lasr' — did you mean 'lars'? use one of adamw, sgd, lars

Checks that word their own message take the hint from :func:`did_you_mean` (or the matches from
:func:`nearest`), so every hint in medcl reads the same.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar, overload

from medcl.errors import ConfigError, MedclError

T = TypeVar("T")

__all__ = ["did_you_mean", "look_up", "nearest"]


def nearest(value: object, options: Iterable[object], n: int = 1, cutoff: float = 0.6, *,
            ignore_case: bool = False) -> list[str]:
    """The options closest to ``value``, best first (``difflib.get_close_matches`` on ``str()`` of each).

    Args:
        value: the unknown value (compared as ``str(value)``).
        options: the valid names (a mapping gives its keys; compared as ``str(option)``).
        n: at most this many matches.
        cutoff: similarity ratio in [0, 1] a match must reach.
        ignore_case: compare lower-cased, but return the options as spelled.

    Returns:
        Up to ``n`` option names, the most similar first; ``[]`` when none is close enough.
    """
    names = [str(o) for o in options]
    if not ignore_case:
        return difflib.get_close_matches(str(value), names, n=n, cutoff=cutoff)
    spelled: dict[str, str] = {}
    for name in names:
        spelled.setdefault(name.lower(), name)  # the first spelling of each lower-cased name
    return [spelled[m] for m in difflib.get_close_matches(str(value).lower(), list(spelled), n=n, cutoff=cutoff)]


def did_you_mean(value: object, options: Iterable[object], n: int = 1, cutoff: float = 0.6, *,
                 ignore_case: bool = False, paren: bool = False) -> str:
    """A "did you mean" hint, or ``""`` when no option is close.

    Args:
        value: the unknown value, as for :func:`nearest`.
        options: the valid names, as for :func:`nearest`.
        n: at most this many suggestions.
        cutoff: similarity ratio in [0, 1] a suggestion must reach.
        ignore_case: compare lower-cased, but suggest the options as spelled.
        paren: the form that ends an error's *what* (``" (did you mean 'a'?)"``) instead of the
            form that starts its *fix* (``"did you mean 'a'? "``).

    Returns:
        ``"did you mean 'a'? "`` or ``"did you mean 'a', 'b'? "`` (with ``paren``:
        ``" (did you mean 'a'?)"``), or ``""``.

    Example:
        >>> did_you_mean("lasr", ["adamw", "sgd", "lars"])
        "did you mean 'lars'? "
        >>> did_you_mean("levle", ["level"], paren=True)
        " (did you mean 'level'?)"
    """
    close = nearest(value, options, n=n, cutoff=cutoff, ignore_case=ignore_case)
    if not close:
        return ""
    names = ", ".join(repr(c) for c in close)
    return f" (did you mean {names}?)" if paren else f"did you mean {names}? "


@overload
def look_up(value: object, options: Mapping[str, T], *, what: str, where: str,
            error: type[MedclError] = ..., n: int = ..., verb: str = ...,
            normalize: Callable[[str], str] | None = ...) -> T: ...


@overload
def look_up(value: object, options: Sequence[str], *, what: str, where: str,
            error: type[MedclError] = ..., n: int = ..., verb: str = ...,
            normalize: Callable[[str], str] | None = ...) -> str: ...


def look_up(value: object, options: Mapping[str, T] | Sequence[str], *, what: str, where: str,
            error: type[MedclError] = ConfigError, n: int = 1, verb: str = "use one of",
            normalize: Callable[[str], str] | None = None) -> T | str:
    """The registry entry named ``value``, or an error with a "did you mean" hint.

    Args:
        value: the name asked for (e.g. a config value).
        options: a registry mapping names to entries, or a sequence of valid names.
        what: what ``value`` names, for the message (``"optimizer"`` gives ``unknown optimizer 'x'``).
        where: the config key, argument or file the value came from (the error's *where*).
        error: the :class:`~medcl.errors.MedclError` subclass raised.
        n: at most this many suggestions in the hint.
        verb: the words before the list of valid names in the fix (``"choose one of"``, ...).
        normalize: applied to ``str(value)`` before the look-up and the hint (e.g. lower-casing,
            resolving aliases); the message still shows ``value`` as given.

    Returns:
        ``options[value]`` for a mapping; for a sequence, the item equal to ``value``.

    Raises:
        MedclError: ``error(f"unknown {what} {value!r}", where=where, fix=...)`` where the fix is
            the :func:`did_you_mean` hint followed by ``f"{verb} {', '.join(options)}"``.

    Example:
        >>> look_up("sgd", ("adamw", "sgd"), what="optimizer", where="optimizer.name")
        'sgd'
    """
    key: object = value if normalize is None else normalize(str(value))
    try:
        if isinstance(options, Mapping):
            if key in options:
                return options[key]  # type: ignore[index]
        else:
            for option in options:
                if option == key:
                    return option
    except TypeError:  # an unhashable value (a list, a dict) is simply not a known name
        pass
    raise error(f"unknown {what} {value!r}", where=where,
                fix=f"{did_you_mean(key, options, n=n)}{verb} {', '.join(map(str, options))}")
