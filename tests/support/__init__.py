"""Helpers shared by test directories: launchers, clients, builders and fixtures that more than
one test file needs. Test files and conftest.py files import from here, never from each other."""
