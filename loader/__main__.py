"""`python -m loader` is the `modelwatch` command."""

import sys

from loader.app.cli import main

sys.exit(main())
