import sys

from sandboxlib.cli import main

sys.exit(main(sys.argv[1:]))
