"""`python -m alexkit` (what `torchrun -m alexkit train` runs)."""

from alexkit.cli.main import main

if __name__ == "__main__":
    main()
