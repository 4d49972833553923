"""The control plane: `tollway serve`, its admin API, and what it administers."""
