"""Helpers of the integration suite (importable from tests, unlike conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

from kswgdb.qemu.machine import Machine

#: The type of the ``machine`` fixture: ``machine(image=None, **Machine_kwargs) -> Machine``.
MachineFactory = Callable[..., Machine]
