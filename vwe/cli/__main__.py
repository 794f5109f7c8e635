"""`python -m vwe.cli`, the same as the `vwe` command."""
import sys

from vwe.cli import main

sys.exit(main())
