"""`python -m so3krates ...`: the same as the `so3krates` command."""
from so3krates.cli import entry

if __name__ == "__main__":
    entry()
