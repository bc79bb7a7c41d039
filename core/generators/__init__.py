"""Generators: the user's diffusion model behind one small protocol."""

from __future__ import annotations

from .base import (
    EDIT_ROUTE_CHOICES,
    IMG2IMG,
    REFERENCE,
    ROUTES,
    TEXT_TO_IMAGE,
    Generator,
    GeneratorError,
    check_route,
    reference_capacity,
)

__all__ = [
    "EDIT_ROUTE_CHOICES",
    "IMG2IMG",
    "REFERENCE",
    "ROUTES",
    "TEXT_TO_IMAGE",
    "Generator",
    "GeneratorError",
    "check_route",
    "reference_capacity",
]
