"""Test support: synthetic datasets, tiny exports, fakes and tool wrappers shared by the tests."""
