#!/usr/bin/env python3
"""convert-turbosparse from a checkout: the same as the installed command of that name.

Puts ../python on sys.path so the converter (pure Python, no native library) runs without
installing the package. See docs/convert.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from turbosparse.convert.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
