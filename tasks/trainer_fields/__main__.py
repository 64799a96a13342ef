"""`python -m tasks.trainer_fields [--check]`: rewrite (or check) the snapshot of every
registered trainer's config class."""

import sys

from tasks.registry import MODULES
from tasks.trainer_fields import main

sys.exit(main(sys.argv[1:], MODULES))
