import sys

from soak.runner import main

sys.exit(main())
