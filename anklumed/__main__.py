import sys

from anklumed.main import main

sys.exit(main())
