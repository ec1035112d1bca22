"""``python -m revsde``: the ``revsde`` command."""
import sys

from .cli import main

sys.exit(main())
