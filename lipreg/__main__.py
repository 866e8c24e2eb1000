"""``python -m lipreg`` is the same as the ``lipreg`` command."""

from lipreg.cli import main

if __name__ == "__main__":
    main()
