"""``python -m gpseg``: the same command line as the ``gpseg`` script."""

from gpseg.cli import main

main()
