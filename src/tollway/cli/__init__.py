"""The `tollway` command."""
