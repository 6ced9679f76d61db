"""python3 -m kbox: the kbox command."""
import sys

from kbox.cli import main

sys.exit(main())
