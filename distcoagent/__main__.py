"""``python -m distcoagent``: the ``distcoagent`` command line."""
import sys

from .cli import main

sys.exit(main())
