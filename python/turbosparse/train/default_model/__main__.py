"""python -m turbosparse.train.default_model: runs the whole pipeline (pipeline.py)."""
import sys

from .pipeline import main

sys.exit(main())
