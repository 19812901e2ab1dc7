"""``python -m chatsdk``: the same as the ``chatsdk`` command."""

from __future__ import annotations

import sys

from chatsdk.cli import main

if __name__ == "__main__":
    sys.exit(main())
