from inferclub.hub.cli import main

raise SystemExit(main())
