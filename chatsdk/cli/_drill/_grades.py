"""The drill's report card: one letter per arm, from three figures.

Each figure earns a letter on its own and the arm gets the worst of the three, so an arm
cannot make up for duplicates with speed or for losses with silence:

========  ==========================  ==========================  =====================
grade     delivered exactly once      duplicates (% of messages)  caller-visible errors
========  ==========================  ==========================  =====================
A+        >= 99.9 %                   0                           < 1 %
A         >= 99 %                     0                           < 1 %
B         >= 97 %                     <= 0.1 %                    < 3 %
C         >= 90 %                     <= 1 %                      < 10 %
D         >= 80 %                     <= 5 %                      < 25 %
F         below that                  above that                  25 % or more
========  ==========================  ==========================  =====================

So A+ is exactly the target of the spec (>= 99.9 % delivered exactly once, no duplicate,
< 1 % of calls failing visibly); any duplicate at all caps an arm at B.
"""

from __future__ import annotations

__all__ = ["GRADES", "grade"]

#: Grades from best to worst.
GRADES = ("A+", "A", "B", "C", "D", "F")

# (minimum exactly-once %, grade), best first.
_EXACTLY_ONCE = ((99.9, "A+"), (99.0, "A"), (97.0, "B"), (90.0, "C"), (80.0, "D"))
# (maximum duplicates as % of messages, grade), best first; 0 duplicates earns A+.
_DUPLICATES = ((0.1, "B"), (1.0, "C"), (5.0, "D"))
# (errors % strictly below, grade), best first.
_ERRORS = ((1.0, "A+"), (3.0, "B"), (10.0, "C"), (25.0, "D"))


def _exactly_once_letter(pct: float) -> str:
    for floor, letter in _EXACTLY_ONCE:
        if pct >= floor:
            return letter
    return "F"


def _duplicates_letter(duplicates: int, messages: int) -> str:
    if duplicates <= 0:
        return "A+"
    pct = 100.0 * duplicates / max(messages, 1)
    for ceiling, letter in _DUPLICATES:
        if pct <= ceiling:
            return letter
    return "F"


def _errors_letter(pct: float) -> str:
    for ceiling, letter in _ERRORS:
        if pct < ceiling:
            return letter
    return "F"


def grade(
    *, delivered_exactly_once_pct: float, duplicates: int, messages: int, caller_errors_pct: float
) -> str:
    """The arm's grade: the worst of the letters its three figures earn (see module doc).

    Args:
        delivered_exactly_once_pct: messages stored exactly once at the server, in percent.
        duplicates: extra copies stored at the server (a message stored 3 times counts 2).
        messages: messages (intents) in the workload.
        caller_errors_pct: operations that raised or answered non-2xx to the caller, in percent.

    Returns:
        One of :data:`GRADES`.
    """
    letters = (
        _exactly_once_letter(delivered_exactly_once_pct),
        _duplicates_letter(duplicates, messages),
        _errors_letter(caller_errors_pct),
    )
    return max(letters, key=GRADES.index)
