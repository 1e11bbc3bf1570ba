import sys

from flcore.cli import main

sys.exit(main())
