"""One Countdown task: reach `target` using each of `nums` exactly once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    target: int
    nums: tuple[int, ...]
