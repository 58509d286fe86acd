from inferclub.cli import main

raise SystemExit(main())
