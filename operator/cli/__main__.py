import sys

from savepoint.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
