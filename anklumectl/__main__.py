import sys

from anklumectl.main import main

sys.exit(main())
