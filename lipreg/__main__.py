"""``python -m lipreg`` is the same as the ``lipreg`` command."""

import sys

from lipreg.cli import main

if __name__ == "__main__":
    sys.argv[0] = "lipreg"  # so usage lines read "lipreg …", not "__main__.py …"
    main()
