"""``python -m gpseg``: the same command line as the ``gpseg`` script."""

from gpseg.cli import main

if __name__ == "__main__":  # not when a tool imports every module of the package
    main()
