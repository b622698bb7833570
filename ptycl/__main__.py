import sys

from ptycl.cli import main

sys.exit(main())
