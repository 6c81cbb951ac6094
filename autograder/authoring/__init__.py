"""Tools for the course's authors: mutation testing of the tests."""
