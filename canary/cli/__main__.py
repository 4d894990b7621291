from canary.cli.main import main

raise SystemExit(main())
