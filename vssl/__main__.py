"""``python -m vssl``: see `vssl.cli`."""

import sys

from vssl.cli import main

if __name__ == "__main__":
    sys.exit(main())
