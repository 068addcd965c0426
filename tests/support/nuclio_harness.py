"""Call a nuclio bundle's ``main.handler`` in a fresh interpreter, as nuclio's Python runtime would.

The runtime gives the handler a ``context`` (logger, user_data, ``Response``) and an ``event`` with a
``body``; these stand-ins have exactly the attributes the bundle uses. A fresh interpreter proves the
bundle imports its own copy of the package, not the installed one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

_PRELUDE = r"""
import base64, json, sys
sys.path.insert(0, sys.argv[1])
import main, cvat_argo

class Logger:
    def __init__(self): self.lines = []
    def info(self, message): self.lines.append(message)
    warn = error = debug = info

class UserData: pass

class Context:
    def __init__(self):
        self.user_data, self.logger = UserData(), Logger()
    @staticmethod
    def Response(body, headers, content_type, status_code):
        return {"body": body, "content_type": content_type, "status_code": status_code}

class Event:
    def __init__(self, body): self.body = body

def encoded(path):
    return base64.b64encode(open(path, "rb").read()).decode()

context = Context()
main.init_context(context)
"""


def run_handler(bundle: Path, script: str, *args: Path | str) -> Any:
    """Run ``script`` after the nuclio stand-ins (``context``, ``Event``, ``encoded``); return its last line as JSON.

    ``script`` sees the bundle folder as ``sys.argv[1]`` and ``args`` from ``sys.argv[2]`` on.
    """
    result = subprocess.run([sys.executable, "-c", _PRELUDE + script, str(bundle), *map(str, args)],
                            capture_output=True, text=True, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return json.loads(result.stdout.strip().splitlines()[-1])
