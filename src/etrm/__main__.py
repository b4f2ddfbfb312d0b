"""`python -m etrm` is the same as the `etrm` console script."""

from etrm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
