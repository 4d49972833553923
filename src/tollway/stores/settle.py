"""Moved to `tollway.engine.settle` (the settle logic is pure); kept for the stores' imports."""

from tollway.engine.settle import Hold, SettleStep, hold_of, settle_step

__all__ = ["Hold", "SettleStep", "hold_of", "settle_step"]
