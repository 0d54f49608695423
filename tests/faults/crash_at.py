"""Run ``mammo process`` and SIGKILL it at a chosen call of a product function.

    python -m tests.faults.crash_at tasks.file_outcomes:apply_file_outcomes 2 before

wraps ``apply_file_outcomes`` so that the process kills itself with SIGKILL just before its
second call (``after`` kills right after the call returns), then runs ``mammo process``. The
kill is real: no handler, ``finally`` block or Prefect state change runs, so the files, locks
and database rows are left exactly as a crash at that point leaves them.

The target is patched on its module or class before the flow module is imported, so callers
that import it by name (``from module import function``) get the wrapper too.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys


def install_crash(target: str, call_number: int, when: str) -> None:
    """Wrap ``module:attribute[.attribute]`` to SIGKILL this process at call ``call_number``."""
    module_name, _, attribute_path = target.partition(":")
    owner = importlib.import_module(module_name)
    *parents, name = attribute_path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)
    calls = 0

    @functools.wraps(original)
    def crash_at_call(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == call_number and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if calls == call_number and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, crash_at_call)


def main(argv: list[str]) -> int:
    target, call_number, when = argv
    if when not in ("before", "after"):
        raise SystemExit(f"when must be 'before' or 'after', got {when!r}")
    install_crash(target, int(call_number), when)

    from mammo.cli import main as mammo_main

    return mammo_main(["process"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
