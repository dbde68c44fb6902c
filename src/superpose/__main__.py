import sys

from superpose.cli.main import main

sys.exit(main())
