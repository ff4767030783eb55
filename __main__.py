import sys

from edgetvm.cli import main

sys.exit(main())
