import sys

from semcache_server.cli import main

sys.exit(main())
