from inferclub_agent.cli import main

raise SystemExit(main())
