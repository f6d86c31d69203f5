"""The repository's root conftest: only the plugins every pytest run here loads."""

# each test's CPU, its QEMU included (docs/testing.md, "Suite time"); a -p option would be imported
# before pytest puts this directory on sys.path
pytest_plugins = ["tests.cputime"]
