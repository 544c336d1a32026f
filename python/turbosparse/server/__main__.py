"""python -m turbosparse.server: the same as the ts-server command."""
import sys

from .cli import main

sys.exit(main())
