import sys

from pgjit.cli import main

sys.exit(main())
