"""``python -m cli ...``: the `grader` command."""

from cli.main import main

raise SystemExit(main())
