from lavt.cli import main

raise SystemExit(main())
