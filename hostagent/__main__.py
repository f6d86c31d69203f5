from hostagent.cli import main

raise SystemExit(main())
