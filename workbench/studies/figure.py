"""A captioned figure of a study's report, in its section: what every section module yields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Figure:
    key: str
    title: str
    caption: str
    figure: Any
    section: str
