"""`python -m recfactory <job> [flags]`."""

from recfactory.jobs.runtime.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
