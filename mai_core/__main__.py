import sys

from mai_core.cli import main

sys.exit(main())
