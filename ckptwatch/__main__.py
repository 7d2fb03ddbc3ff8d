import sys

from ckptwatch.cli import main

sys.exit(main())
