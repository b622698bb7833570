import sys

from ptycl.cli import main

if __name__ == "__main__":  # not in the spawned workers of `bench continual --jobs`
    sys.exit(main())
