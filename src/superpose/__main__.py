import sys

from superpose.cli import main

sys.exit(main())
