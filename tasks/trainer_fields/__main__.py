"""`python -m tasks.trainer_fields [--check]`: rewrite (or check) the snapshot of every
trainer's config class MLOC ships (a type of another distribution keeps its own)."""

import sys

from tasks.registry import BUILTIN
from tasks.trainer_fields import main

sys.exit(main(sys.argv[1:], BUILTIN))
