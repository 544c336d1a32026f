"""The `ts-main` console command: runs the ts-main binary the wheel carries in turbosparse/bin
(pip installs console commands as Python shims; this one hands the process over to the binary,
so its flags, output, exit status and Ctrl-C handling are ts-main's own)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional


def ts_main_path() -> Path:
    """Where the installed package keeps the ts-main executable."""
    return Path(__file__).resolve().parent / "bin" / ("ts-main.exe" if os.name == "nt" else "ts-main")


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    exe = ts_main_path()
    if not exe.is_file():
        print(f"ts-main: the binary is missing from this installation ({exe}); "
              "reinstall turbosparse with `pip install .`", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "nt":  # no exec on Windows: run it and pass the status on
        import subprocess

        return subprocess.call([str(exe), *args])
    os.execv(str(exe), [str(exe), *args])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
