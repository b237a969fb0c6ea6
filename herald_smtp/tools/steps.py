"""The doctor's lines: a Step (name, status, detail, fix), the statuses, and how a check stops at its failure.
Shared by the doctor's blocks (tools/doctor.py: relays and the bounce mailbox; tools/domain.py: sender domains)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

# WARN: worth fixing, but mail may still go out (the sender domain checks); only FAIL fails the doctor.
OK, FAIL, SKIP, WARN = "ok", "FAIL", "skip", "WARN"


@dataclass(frozen=True)
class Step:
    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4} {self.name:<10} {self.detail}"
        return f"{text} -> fix: {self.fix}" if self.fix else text


class Failed(Exception):
    """A check's FAIL: the block stops there (later steps depend on it) and shows this step last."""

    def __init__(self, step: Step):
        self.step = step


def fail(name: str, detail: str, fix: str) -> NoReturn:
    raise Failed(Step(name, FAIL, detail, fix))
