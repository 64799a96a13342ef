import sys

from tasks.trainer_fields import main

sys.exit(main(sys.argv[1:]))
