from inferclub.agent.cli import main

raise SystemExit(main())
