"""What every step shares: readable errors and the exit codes the engines act on."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from ..errors import CvatArgoError


def run_step(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a step's ``main``; a user-facing error prints one line and exits with its code.

    TransientError exits 75 (EX_TEMPFAIL), which the Argo retry expression and the local engine
    retry; every other error is permanent. Unexpected exceptions keep their traceback.
    """
    try:
        return main(argv)
    except CvatArgoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
