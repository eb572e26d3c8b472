import sys

from r21d.cli import main

sys.exit(main())
