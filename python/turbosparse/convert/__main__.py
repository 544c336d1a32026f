"""python -m turbosparse.convert: the same as the convert-turbosparse command."""

import sys

from .cli import main

sys.exit(main())
