//! Integration tests for skprocess live in `tests/`; this library is empty.
