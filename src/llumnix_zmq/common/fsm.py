"""A tiny explicit state machine: an enum, a table of legal transitions, one ``transition()``.

Illegal transitions are rejected (``IllegalTransition``) and logged, never applied."""

from __future__ import annotations

import enum
import logging
from typing import Generic, Mapping, TypeVar

S = TypeVar("S", bound=enum.Enum)
log = logging.getLogger(__name__)


class IllegalTransition(Exception):
    pass


class StateMachine(Generic[S]):
    def __init__(self, name: str, initial: S, table: Mapping[S, frozenset]):
        self.name = name
        self.state = initial
        self.table = table
        self.history: list[S] = [initial]

    def can(self, target: S) -> bool:
        return target in self.table.get(self.state, frozenset())

    def transition(self, target: S) -> None:
        if not self.can(target):
            log.warning("%s: illegal transition %s -> %s", self.name, self.state.name, target.name)
            raise IllegalTransition(f"{self.name}: {self.state.name} -> {target.name}")
        self.state = target
        self.history.append(target)
