"""python -m turbosparse.train: the same as ts-train-predictor."""
import sys

from .cli import main

sys.exit(main())
