"""``python -m mai_core.app [--port N] [--address HOST]``: start the web app (:mod:`mai_core.app.serve`)."""

import sys

from mai_core.app.serve import main

sys.exit(main())
