import sys

try:
    from rnnkit.cli.main import main
except KeyboardInterrupt:  # Ctrl-C while torch is still importing: no traceback either
    print("rnnkit: interrupted by SIGINT; stopped", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
