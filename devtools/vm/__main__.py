import sys

from devtools.vm.guest import main

sys.exit(main())
