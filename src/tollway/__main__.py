"""``python -m tollway``: the `tollway` command."""

from tollway.cli.main import main

raise SystemExit(main())
