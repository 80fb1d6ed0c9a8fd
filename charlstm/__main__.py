from charlstm.cli import main

raise SystemExit(main())
