"""``python -m tollway.cli``: the `tollway` command."""

from tollway.cli.main import main

raise SystemExit(main())
